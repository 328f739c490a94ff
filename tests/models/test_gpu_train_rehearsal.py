"""The GPU training script, rehearsed end to end on the CPU with tiny settings: pack,
train both models side by side, export, check parity, and pack the results as the
device tool returns them."""

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from models.datasets import load_camvid

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_train  # noqa: E402
import train_pack  # noqa: E402

pytestmark = pytest.mark.shared_data


def test_pack_then_train_both_models_export_and_return_at_most_8_small_files(
    tmp_path: Path,
) -> None:
    pack, out = tmp_path / "pack", tmp_path / "out"
    assert train_pack.main(["--limit", "2", "--quality", "90", "--out", str(pack)]) == 0
    manifest = json.loads((pack / "MANIFEST.json").read_text())
    assert manifest["camvid_frames"] == {"train": 6, "val": 2} and manifest["isbi_slices"] == 24
    images, _, names = load_camvid(pack, "val")  # the loaders read the pack's JPEGs
    assert images.shape == (2, 360, 480, 3) and names[0].endswith(".png")

    tiny = ["--tiny", "--jobs", "unet,camvid-final", "--minutes", "0.001", "--workers", "1"]
    paths = ["--data-root", str(pack), "--out", str(out), "--work", str(tmp_path / "work")]
    code = gpu_train.main(tiny + paths)
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= gpu_train.MAX_FILES - 1  # gpu_train.sh adds driver.log
    assert all((out / f).stat().st_size <= gpu_train.PART_BYTES for f in files)
    summary = json.loads((out / "summary.json").read_text())
    for job in ("unet", "camvid-final"):
        assert summary["jobs"][job]["export"]["parity_ok"] is True
        assert "mean_iou" in summary["jobs"][job]["metrics"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        assert "unet/unet-isbi/curves.png" in tar.getnames()
    joined = b"".join((out / f).read_bytes() for f in files if f.startswith("weights.tar."))
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        member = tar.extractfile("camvid-final/best.pt")
        assert member is not None
        best = torch.load(io.BytesIO(member.read()), weights_only=False)
    assert best["config"]["trainval"] is True and best["config"]["gpu_augment"] is True
