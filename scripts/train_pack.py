"""Pack the shared training data into a compact folder that can travel to a GPU machine.

`python scripts/train_pack.py` reads ../shared/datasets and writes `pack/` (ignored by
git): CamVid frames as JPEG (quality 95, 4:4:4 chroma: no colour subsampling), CamVid
label maps and ISBI 2012 as they are (PNG, byte for byte), `classes.csv`, and
`MANIFEST.json` (sources, counts, bytes). The loaders in models/datasets.py read the
pack like the shared folder: `python -m models.train --data-root pack ...`.

Only the working tree and carried folders reach the GPU machine, 64 MiB together, so
`--quality auto` (the default) takes the highest JPEG quality from 95 down whose pack,
estimated on every 10th frame, keeps the tree (git's tracked and untracked-not-ignored
files) plus the pack under `--budget-mib` (default 58, a margin under 64).

`--limit N` keeps the first N CamVid frames of each video sequence of each split (a
small pack for rehearsals and tests).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.datasets import DEFAULT_DATA_ROOT, camvid_sequence  # noqa: E402

QUALITIES = (95, 94, 93, 92, 91, 90, 88, 85, 80)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_bytes(repo: Path) -> int:
    """Bytes of what travels without `carry`: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    files = [repo / name for name in listed.decode().split("\0") if name]
    return sum(f.stat().st_size for f in files if f.is_file())


def encode(image: Path, quality: int) -> bytes:
    out = io.BytesIO()
    with Image.open(image) as im:
        # 4:4:4 (no chroma subsampling): thin poles and signs keep their colour.
        im.convert("RGB").save(out, "JPEG", quality=quality, subsampling=0, optimize=True)
    return out.getvalue()


def choose_quality(frames: list[Path], fixed_bytes: int, budget: int) -> tuple[int, int]:
    """(quality, estimated total bytes): the highest quality that fits, estimated on
    every 10th frame; the lowest tried when none does."""
    sample = frames[::10] or frames
    estimate = 0
    for quality in QUALITIES:
        per_frame = sum(len(encode(f, quality)) for f in sample) / len(sample)
        estimate = fixed_bytes + int(per_frame * len(frames))
        if estimate <= budget:
            return quality, estimate
    return QUALITIES[-1], estimate


def camvid_frames(source: Path, limit: int) -> dict[str, list[Path]]:
    frames = {}
    for split in ("train", "val"):
        kept: Counter[str] = Counter()
        frames[split] = []
        for image in sorted((source / split).glob("*.png")):
            sequence = camvid_sequence(image.name)
            if limit and kept[sequence] >= limit:
                continue
            kept[sequence] += 1
            frames[split].append(image)
    return frames


def pack_camvid(
    source: Path, dest: Path, frames: dict[str, list[Path]], quality: int
) -> dict[str, int]:
    for split, images in frames.items():
        (dest / split).mkdir(parents=True, exist_ok=True)
        (dest / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for image in images:
            (dest / split / f"{image.stem}.jpg").write_bytes(encode(image, quality))
            annot = f"{split}annot"
            shutil.copyfile(source / annot / image.name, dest / annot / image.name)
    shutil.copyfile(source / "classes.csv", dest / "classes.csv")
    return {split: len(images) for split, images in frames.items()}


def pack_isbi(source: Path, dest: Path) -> int:
    for sub in ("images", "labels"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for f in (source / sub).glob("*.png"):
            shutil.copyfile(f, dest / sub / f.name)
    return len(list((dest / "images").glob("*.png")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", type=Path, default=ROOT / "pack")
    parser.add_argument("--limit", type=int, default=0, help="CamVid frames per sequence")
    parser.add_argument("--quality", default="auto", help="JPEG quality 1-95, or auto")
    parser.add_argument("--budget-mib", type=float, default=58.0, help="tree + pack, for auto")
    args = parser.parse_args(argv)
    if not (args.source / "camvid").is_dir() or not (args.source / "isbi2012").is_dir():
        parser.error(f"{args.source} holds no camvid/ and isbi2012/")
    if args.out.exists():
        shutil.rmtree(args.out)
    frames = camvid_frames(args.source / "camvid", args.limit)
    if args.quality == "auto":
        # What is fixed: the tree without the pack, the label maps and ISBI, as they are.
        fixed = tree_bytes(ROOT) + folder_bytes(args.source / "isbi2012")
        fixed += sum(
            (args.source / "camvid" / f"{split}annot" / f.name).stat().st_size
            for split, files in frames.items()
            for f in files
        )
        every = [f for files in frames.values() for f in files]
        quality, estimate = choose_quality(every, fixed, int(args.budget_mib * 2**20))
        print(f"quality {quality}: tree + pack estimated at {estimate / 2**20:.1f} MiB")
    else:
        quality = int(args.quality)
    camvid = pack_camvid(args.source / "camvid", args.out / "camvid", frames, quality)
    isbi = pack_isbi(args.source / "isbi2012", args.out / "isbi2012")
    sizes = {name: folder_bytes(args.out / name) for name in ("camvid", "isbi2012")}
    manifest = {
        "source": str(args.source),
        "camvid_frames": camvid,
        "camvid_jpeg": {"quality": quality, "chroma": "4:4:4", "optimize": True},
        "isbi_slices": isbi,
        "bytes": sizes,
    }
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    total = folder_bytes(args.out)
    print(
        f"wrote {args.out}: CamVid {camvid} frames ({sizes['camvid'] / 2**20:.1f} MiB), "
        f"ISBI {isbi} slices ({sizes['isbi2012'] / 2**20:.1f} MiB), "
        f"total {total / 2**20:.1f} MiB; with the working tree "
        f"{(total + tree_bytes(ROOT)) / 2**20:.1f} MiB of the 64 MiB a device call carries"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
