import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from export.card import training_recipe
from models import onnx_weights
from models.datasets import (
    DEFAULT_DATA_ROOT,
    camvid_classes,
    isbi_slice_ids,
    load_camvid,
    load_isbi,
)
from models.evaluate import main as evaluate
from models.losses import weighted_cross_entropy
from models.onnx_weights import onnx_lineage
from models.registry import build_model
from models.train import TrainConfig, lineage, lr_at, train

needs_data = pytest.mark.shared_data  # tests/conftest.py: skips outside CI when missing


def tiny_run(out_dir: Path, **overrides: Any) -> TrainConfig:
    """A U-Net run on the shared ISBI slices, one 64-pixel crop per step."""
    defaults: dict[str, Any] = dict(
        task="unet-isbi",
        out_dir=out_dir,
        steps_per_epoch=1,
        batch_size=1,
        crop=64,
        border_weights=False,
        warmup_steps=1,
    )
    return TrainConfig(**{**defaults, **overrides})


@needs_data
def test_isbi_loader_sorts_numerically_and_maps_membrane_to_zero() -> None:
    ids = isbi_slice_ids(DEFAULT_DATA_ROOT)
    assert ids[:3] == [0, 1, 2] and ids == sorted(ids) and 10 in ids
    images, labels = load_isbi(DEFAULT_DATA_ROOT, [0, 10])
    assert images.shape == labels.shape == (2, 512, 512)
    assert set(np.unique(labels)) == {0, 1}
    membrane = (labels == 0).mean()
    assert 0.15 < membrane < 0.30  # README: 18.7-27.0 % per slice
    assert images[labels == 0].mean() < images[labels == 1].mean()  # membranes are dark


@needs_data
def test_camvid_loader_classes_and_void() -> None:
    names, palette = camvid_classes(DEFAULT_DATA_ROOT)
    assert names[0] == "Sky" and names[-1] == "Bicyclist" and len(names) == len(palette) == 11
    assert palette[4] == (60, 40, 222)
    images, labels, files = load_camvid(DEFAULT_DATA_ROOT, "val")
    assert images.shape == (101, 360, 480, 3) and labels.shape == (101, 360, 480)
    assert labels.max() == 11 and files == sorted(files)


def test_one_training_step_on_tiny_random_data_lowers_loss() -> None:
    torch.manual_seed(0)
    model = build_model("unet", base_width=4, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32))
    losses = []
    for _ in range(5):
        loss = weighted_cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_lr_warms_up_then_decays() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=10)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(10, 100, cfg) == pytest.approx(1.0)
    assert lr_at(100, 100, cfg) == pytest.approx(0.01)


@needs_data
def test_train_smoke_writes_checkpoints_and_resumes(tmp_path: Path) -> None:
    train(tiny_run(tmp_path, epochs=1))
    run = tmp_path / "unet-isbi"
    assert {"best.pt", "last.pt", "history.json", "curves.png"} <= {p.name for p in run.iterdir()}
    state = train(tiny_run(tmp_path, epochs=2, resume=True))
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert state["step"] == 2 and "rand_error" in history[-1]["val"]


@needs_data
def test_fine_tuning_starts_from_the_weights_and_records_its_lineage(tmp_path: Path) -> None:
    train(tiny_run(tmp_path / "a", border_weights=True, epochs=1))
    parent = tmp_path / "a" / "unet-isbi" / "best.pt"
    train(tiny_run(tmp_path / "b", init_from=str(parent), lr=0.0, epochs=1))
    child = torch.load(tmp_path / "b" / "unet-isbi" / "best.pt", weights_only=False)
    start = torch.load(parent, weights_only=False)
    for key, value in start["model"].items():  # lr 0: the weights are the parent's
        if "running_" not in key and value.is_floating_point():  # BN statistics still move
            assert torch.equal(child["model"][key], value), key
    assert child["parent"]["config"]["border_weights"] is True
    recipe = training_recipe(child)
    assert recipe.startswith("1. from scratch") and "2. fine-tuned from stage 1" in recipe


@needs_data
def test_ema_weights_are_the_ones_validated_and_kept_and_survive_resume(tmp_path: Path) -> None:
    train(tiny_run(tmp_path, steps_per_epoch=2, ema=0.5, epochs=1))
    run = tmp_path / "unet-isbi"
    best = torch.load(run / "best.pt", weights_only=False)
    last = torch.load(run / "last.pt", weights_only=False)
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items()}
    assert int(averaged["n_averaged"]) == 2
    weight = "head.weight"
    assert torch.equal(best["model"][weight], averaged[weight])
    assert not torch.equal(best["model"][weight], last["model"][weight])  # not the raw weights
    train(tiny_run(tmp_path, steps_per_epoch=2, ema=0.5, epochs=2, resume=True))
    resumed = torch.load(run / "last.pt", weights_only=False)
    assert int(resumed["ema"]["n_averaged"]) == 4  # the average went on, not restarted


@needs_data
def test_evaluate_scores_a_checkpoint_as_its_training_run_did(tmp_path: Path) -> None:
    train(tiny_run(tmp_path, epochs=1, val_views=2))
    best = tmp_path / "unet-isbi" / "best.pt"
    out = tmp_path / "evaluation"
    metrics = evaluate([str(best), "--out", str(out), "--threads", "1"])
    assert metrics == pytest.approx(torch.load(best, weights_only=False)["metrics"])
    report = json.loads((out / "evaluation.json").read_text())
    assert report["views"] == 2 and (out / "evaluation.png").is_file()


def test_training_recipe_reads_each_stages_threads_and_time() -> None:
    parent = {"config": {"threads": 1, "lr": 0.002}, "train_seconds": 600, "epoch": 7}
    child = {
        "config": {"threads": 2, "lr": 0.0005, "init_from": "a.pt", "out_dir": "runs/x"},
        "train_seconds": 1800,
        "epoch": 12,
        "parent": parent,
    }
    assert training_recipe(child).splitlines() == [
        "1. from scratch, 10 minutes on 1 CPU thread up to its best epoch, 7: threads=1, lr=0.002.",
        "2. fine-tuned from stage 1, 30 minutes on 2 CPU threads up to its best epoch, 12: "
        "threads=2, lr=0.0005.",
    ]


def test_a_run_fine_tuned_from_a_shipped_file_continues_its_cards_stages() -> None:
    shipped = {
        "config": {"weights": "app/shipped_models/m.onnx"},
        "onnx": {"path": "app/shipped_models/m.onnx", "name": "m", "version": "1.2.0"},
        "card_stages": ["1. from scratch, a.", "2. fine-tuned from stage 1, b."],
    }
    child = {
        "config": {"threads": 1, "lr": 0.001, "init_from_onnx": "app/shipped_models/m.onnx"},
        "train_seconds": 1200,
        "epoch": 9,
        "device": "cpu",
        "parent": shipped,
    }
    grandchild = {
        "config": {"lr": 0.0001, "init_from": "runs/x/best.pt"},
        "train_seconds": 300,
        "epoch": 2,
        "device": "NVIDIA H200",
        "parent": lineage(child),
    }
    assert training_recipe(grandchild).splitlines() == [
        "1. from scratch, a.",
        "2. fine-tuned from stage 1, b.",
        "3. fine-tuned from m 1.2.0 (stage 2), 20 minutes on 1 CPU thread up to its best "
        "epoch, 9: threads=1, lr=0.001.",
        "4. fine-tuned from stage 3, 5 minutes on NVIDIA H200 up to its best epoch, 2: lr=0.0001.",
    ]
    shipped["card_stages"] = []  # a file without a card: the run is the first stage known
    assert training_recipe(child).startswith(
        "1. fine-tuned from m 1.2.0 (app/shipped_models/m.onnx), 20 minutes"
    )


def test_onnx_lineage_reads_the_spec_key_the_service_writes() -> None:
    from app.spec import SPEC_KEY

    assert onnx_weights.SPEC_KEY == SPEC_KEY  # a copy: models/ runs without pydantic


def _onnx_with_spec(path: Path, spec: dict[str, object]) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph)
    onnx.helper.set_model_props(model, {"segserve.spec": json.dumps(spec)})
    onnx.save(model, str(path))


def test_onnx_lineage_reads_the_spec_and_the_cards_stages(tmp_path: Path) -> None:
    path = tmp_path / "m.int8.onnx"
    _onnx_with_spec(path, {"name": "m", "version": "2.0.0"})
    assert onnx_lineage(path)["card_stages"] == []  # no card beside it
    (tmp_path / "m.md").write_text(
        "# m 2.0.0\n\n## Training recipe\n1. from scratch, 10 minutes:\n  lr=0.002.\n"
        "2. fine-tuned from stage 1, b.\n\n## Validation metrics\n1. not a stage\n"
    )
    lineage_ = onnx_lineage(path)
    assert lineage_["onnx"] == {"path": str(path), "name": "m", "version": "2.0.0"}
    assert lineage_["config"] == {"weights": str(path)}
    assert lineage_["card_stages"] == [
        "1. from scratch, 10 minutes: lr=0.002.",
        "2. fine-tuned from stage 1, b.",
    ]
    (tmp_path / "m.md").write_text(  # the oldest cards: one unnumbered stage
        "## Training recipe\nTrained from scratch on 1 CPU thread\n(best epoch 40): lr=0.002.\n"
    )
    assert onnx_lineage(path)["card_stages"] == [
        "1. Trained from scratch on 1 CPU thread (best epoch 40): lr=0.002."
    ]


@needs_data
def test_border_w0_reaches_the_weight_maps(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.tasks as tasks

    seen: list[float] = []

    def fake_map(label: np.ndarray, w0: float = 10.0) -> np.ndarray:
        seen.append(w0)
        return np.ones(label.shape, np.float32)

    monkeypatch.setattr(tasks, "border_weight_map", fake_map)
    task = tasks.get_task("unet-isbi", DEFAULT_DATA_ROOT)
    tasks.build_data(task, DEFAULT_DATA_ROOT, 64, 1, 0, border_weights=True, border_w0=3.0)
    assert seen and set(seen) == {3.0}
