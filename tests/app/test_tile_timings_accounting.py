"""The tiled path's two timings add up: preparation (reading and converting tiles) is
counted as preprocess, session runs as inference, every batch counted, neither counted
twice. Lower bounds come from sleeps (a load can only make them longer); the upper bound
is the wall time of the call. Not a speed claim: it checks the bookkeeping only."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.inference.model_entry import ModelEntry
from app.inference.tiling import TilePlan, segment_tiled
from tests.app.tiny_models import spec_for

READ_S, RUN_S = 0.02, 0.03


class SlowRegions:
    """A 20 x 20 image read a region at a time, each read taking READ_S."""

    def __init__(self) -> None:
        self.pixels = np.zeros((20, 20), np.uint8)
        self.reads = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (20, 20)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.reads += 1
        time.sleep(READ_S)
        return self.pixels[y0:y1, x0:x1]


@pytest.mark.parametrize("pipelined", [False, True])
def test_preprocess_and_inference_count_every_batch_once(pipelined: bool) -> None:
    spec = spec_for("threshold", "slow", labels_output=None)
    runs: list[int] = []

    def runner(output: str, x: np.ndarray) -> np.ndarray:
        runs.append(1)
        time.sleep(RUN_S)
        return np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)

    model = ModelEntry(file="slow.onnx", spec=spec, session=None,
                       providers=["numpy"], runner=runner, pipelined_tiles=pipelined)  # fmt: skip
    source = SlowRegions()
    started = time.perf_counter()
    result = segment_tiled(model, source, TilePlan(8, 2, batch=4))  # 16 tiles, 4 batches
    wall_ms = (time.perf_counter() - started) * 1000
    assert source.reads == 16 and len(runs) == 4
    preprocess, inference = result.timings_ms["preprocess"], result.timings_ms["inference"]
    assert preprocess + inference <= wall_ms + 1
    assert preprocess >= 16 * READ_S * 1000 * 0.9
    if pipelined:  # runs overlap the next batch's reads: at least the last one is waited for
        assert inference >= RUN_S * 1000 * 0.9
    else:
        assert inference >= 4 * RUN_S * 1000 * 0.9


def test_pipelined_inference_counts_the_waits_of_every_batch() -> None:
    # Runs far longer than the tile preparation: each batch's wait is inference time,
    # the last one's (after the loop) and the earlier ones' (inside it) alike.
    spec = spec_for("threshold", "slow", labels_output=None)

    def runner(output: str, x: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)

    model = ModelEntry(file="slow.onnx", spec=spec, session=None, providers=["numpy"],
                       runner=runner, pipelined_tiles=True)  # fmt: skip
    result = segment_tiled(model, np.zeros((20, 20), np.uint8), TilePlan(8, 2, batch=4))
    assert result.timings_ms["inference"] >= 3 * 50
