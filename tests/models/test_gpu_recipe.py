"""The GPU training recipe's parts that run anywhere: time budget, loader keys, class
balancing, held-out sequences, the wider networks and their shipping size."""

import ast
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.datasets import DEFAULT_DATA_ROOT, EpochSampler, SegmentationDataset, camvid_sequence
from models.dilated import DilatedConfig, DilatedNet
from models.gpu_augment import GpuAugment
from models.losses import median_frequency_weights
from models.onnx_weights import load_onnx_weights, recalibrate_batch_norm
from models.registry import build_model
from models.tasks import build_data, get_task
from models.train import TrainConfig, lr_at, train

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "app" / "shipped_models"
SHIP_LIMIT = 32 * 2**20
needs_data = pytest.mark.shared_data

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_train  # noqa: E402


def test_median_frequency_weights_by_hand() -> None:
    # Image 0: 3 px of class 0, 1 px of class 1. Image 1: 2 px of class 0, 2 px of void.
    labels = np.array([[[0, 0], [0, 1]], [[0, 0], [3, 3]]], np.uint8)
    w = median_frequency_weights(labels, num_classes=3)
    # freq_0 = 5 / (4 + 2) = 5/6, freq_1 = 1 / 4 (only image 0 holds it); median 13/24.
    assert w[0] == pytest.approx((13 / 24) / (5 / 6))
    assert w[1] == pytest.approx((13 / 24) / (1 / 4))
    assert w[2] == 0.0  # absent everywhere


def test_lr_follows_the_clock_under_a_time_budget() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=2, minutes=10.0)
    assert lr_at(0, 1000, cfg, elapsed_s=0.0) == pytest.approx(0.5)  # warm-up by steps
    assert lr_at(5, 1000, cfg, elapsed_s=300.0) == pytest.approx(0.505)  # half-way: cos = 0
    assert lr_at(5, 1000, cfg, elapsed_s=900.0) == pytest.approx(0.01)
    assert lr_at(5, 10, TrainConfig(lr=1.0, warmup_steps=2), elapsed_s=1e9) > 0.5  # no budget


def test_epoch_sampler_is_seeded_per_epoch_and_resumes_mid_epoch() -> None:
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(4)
    full = list(sampler)
    assert sorted(i for _, i in full) == list(range(10)) and {e for e, _ in full} == {4}
    sampler.set_epoch(4, start=6)
    assert list(sampler) == full[6:] and len(sampler) == 4
    sampler.set_epoch(5)
    assert list(sampler) != [(5, i) for _, i in full]


def test_dataset_keys_carry_the_epoch_into_worker_copies() -> None:
    images = np.random.default_rng(0).integers(0, 255, (2, 16, 16), dtype=np.uint8)
    labels = (images > 127).astype(np.uint8)

    def jitter(image: Any, label: Any, weight: Any, rng: np.random.Generator) -> Any:
        return np.clip(image + rng.integers(0, 50), 0, 255).astype(np.uint8), label, weight

    ds = SegmentationDataset(images, labels, [0.5], [0.2], transform=jitter, length=4)
    assert torch.equal(ds[(1, 3)][0], ds[(1, 3)][0])  # seeded
    assert not torch.equal(ds[(1, 3)][0], ds[(2, 3)][0])  # another epoch, another draw
    ds.epoch = 2
    assert torch.equal(ds[3][0], ds[(2, 3)][0])  # plain indices use the set epoch


def test_residual_front_end_keeps_stride_8_and_shapes() -> None:
    model = DilatedNet(DilatedConfig(widths=(4, 8, 8), residual=True)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert model.front_end(x).shape == (1, 11, 8, 12)
        assert model(x).shape == (1, 11, 64, 96)


@pytest.mark.parametrize("job", ["unet", "camvid-final"])
def test_gpu_recipes_networks_stay_under_the_shipping_limit(job: str) -> None:
    arch = "unet" if gpu_train.JOBS[job]["task"] == "unet-isbi" else "dilated"
    model = build_model(arch, **json.loads(gpu_train.JOBS[job]["arch-options"]))
    params = sum(p.numel() for p in model.parameters())
    assert 4 * params < SHIP_LIMIT * 0.97  # float32 weights, a margin for the graph


@pytest.mark.parametrize("name", ["dilated-camvid", "unet-isbi"])
def test_shipped_onnx_weights_load_back_with_logit_parity(name: str) -> None:
    path = SHIPPED / f"{name}.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    spec = json.loads(meta["segserve.spec"])
    arch, _, options = str(spec["architecture"]).partition(" ")
    model = load_onnx_weights(build_model(arch, **ast.literal_eval(options)), path).eval()
    channels = 1 if arch == "unet" else 3
    pixels = np.random.default_rng(0).integers(0, 256, (2, channels, 64, 96), dtype=np.uint8)
    mean = np.asarray(spec["mean"], np.float32)[:, None, None]
    std = np.asarray(spec["std"], np.float32)[:, None, None]
    x = torch.from_numpy((pixels / np.float32(255) - mean) / std).float()
    # Graphs with input_dtype uint8 (export/canonical.py) normalise inside.
    fed = pixels if spec.get("input_dtype") == "uint8" else x.numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = session.run(["logits"], {"image": fed})[0]
    with torch.no_grad():
        before = model(x).numpy()
    assert np.abs(before - reference).max() < 1e-3
    recalibrate_batch_norm(model, [x * 1.5 + 0.3])
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert norm.running_var is not None and not torch.allclose(
        norm.running_var, torch.ones_like(norm.running_var), atol=1e-3
    )
    with torch.no_grad():
        after = model.eval()(x).numpy()
    assert np.abs(after - before).max() < 1e-3  # the same function, new statistics


@needs_data
def test_holdout_sequence_is_the_validation_set_and_absent_from_training() -> None:
    task = get_task("dilated-camvid", DEFAULT_DATA_ROOT)
    data = build_data(task, DEFAULT_DATA_ROOT, 64, 1, 0, False, holdout="0006R0")
    assert {camvid_sequence(n) for n in data.val_names} == {"0006R0"}
    assert len(data.val_names) + len(data.train.images) == 367 + 101
    with pytest.raises(ValueError, match="sequences"):
        build_data(task, DEFAULT_DATA_ROOT, 64, 1, 0, False, holdout="Seq05VD")


def tiny(out_dir: Path, **overrides: Any) -> TrainConfig:
    defaults: dict[str, Any] = dict(
        task="dilated-camvid",
        out_dir=out_dir,
        steps_per_epoch=2,
        batch_size=2,
        crop=64,
        warmup_steps=1,
        arch_options='{"widths": [4, 8, 8], "residual": true}',
        class_balance="median",
        holdout="0001TP",
    )
    return TrainConfig(**{**defaults, **overrides})


@needs_data
def test_a_time_budget_stops_the_run_validated_with_its_best_checkpoint(tmp_path: Path) -> None:
    state = train(tiny(tmp_path, epochs=1000, minutes=1e-6, workers=1))
    run = tmp_path / "dilated-camvid"
    history = json.loads((run / "history.json").read_text())
    assert state["step"] == 1 and len(history) == 1 and "val" in history[0]
    best = torch.load(run / "best.pt", weights_only=False)
    assert best["arch_options"]["residual"] is True and best["device"] == "cpu"
    assert best["config"]["holdout"] == "0001TP"


@needs_data
def test_final_fit_keeps_its_last_weights(tmp_path: Path) -> None:
    state = train(tiny(tmp_path, holdout="", trainval=True, epochs=2))
    assert state["best"]["epoch"] == 2


@needs_data
def test_resume_from_a_save_inside_an_epoch_continues_there(tmp_path: Path) -> None:
    train(tiny(tmp_path, epochs=1, steps_per_epoch=4, ckpt_every=2))
    run = tmp_path / "dilated-camvid"
    last = torch.load(run / "last.pt", weights_only=False)
    assert last["state"]["step"] == 4 and last["state"]["epoch"] == 1
    # Pretend the run died after its save at step 2: resuming runs steps 3 and 4 only.
    last["state"].update(step=2, epoch=0, history=[], best=None)
    torch.save(last, run / "last.pt")
    state = train(tiny(tmp_path, epochs=1, steps_per_epoch=4, resume=True))
    assert state["step"] == 4 and len(state["history"]) == 1


def test_gpu_augment_camvid_at_scale_one_is_a_window_of_a_frame_maybe_flipped() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 12, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 11, (3, 12, 16), dtype=np.uint8)
    cpu = torch.device("cpu")
    aug = GpuAugment("camvid", images, labels, None, [0.5] * 3, [0.25] * 3, 8, cpu, scale=(1, 1))
    x, y, w = aug.batch(step=5, n=6)
    assert (
        x.shape == (6, 3, 8, 8) and y.dtype == torch.int64 and torch.equal(w, torch.ones(6, 8, 8))
    )
    windows = {
        (lab[t : t + 8, s : s + 8][:, ::flip]).tobytes()
        for lab in labels.astype(np.int64)
        for t in range(5)
        for s in range(9)
        for flip in (1, -1)
    }
    assert all(sample.numpy().tobytes() in windows for sample in y)
    x2, y2, _ = aug.batch(step=5, n=6)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded per step: resumes replay
    assert not torch.equal(aug.batch(step=6, n=6)[1], y)


def test_gpu_augment_camvid_marks_what_lies_beyond_a_shrunken_frame_void() -> None:
    images = np.full((1, 8, 8, 3), 100, np.uint8)
    labels = np.zeros((1, 8, 8), np.uint8)
    aug = GpuAugment(
        "camvid",
        images,
        labels,
        None,
        [0.5] * 3,
        [0.25] * 3,
        8,
        torch.device("cpu"),
        scale=(0.5, 0.5),
    )
    _, y, _ = aug.batch(step=0, n=2)
    assert ((y == 11).float().mean(dim=(1, 2)) == 0.75).all()  # a 4x4 frame in an 8x8 crop


def test_gpu_augment_isbi_keeps_labels_binary_and_weights_warped() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (2, 64, 64), dtype=np.uint8)
    labels = (rng.random((2, 64, 64)) < 0.2).astype(np.uint8)
    weights = np.full((2, 64, 64), 3.0, np.float32)
    aug = GpuAugment("isbi", images, labels, weights, [0.49], [0.17], 32, torch.device("cpu"))
    x, y, w = aug.batch(step=0, n=4)
    assert x.shape == (4, 1, 32, 32) and set(y.unique().tolist()) <= {0, 1}
    assert torch.allclose(w, torch.full_like(w, 3.0))
    assert 0.1 < y.float().mean() < 0.3


@needs_data
def test_training_with_gpu_augmentation_runs_on_the_cpu_too(tmp_path: Path) -> None:
    state = train(tiny(tmp_path, epochs=1, gpu_augment=True))
    assert state["step"] == 2 and np.isfinite(state["history"][0]["train_loss"])
