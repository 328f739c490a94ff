"""Running one job: its tiles through the model into mapped files, then its result files.
What a job touches on disk is named in app/jobs/files.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.imaging.encode import palette_png
from app.imaging.tiff_regions import TiffRegions
from app.imaging.tiff_write import write_class_map_tiff
from app.inference.admission import Admission
from app.inference.pipeline import segment
from app.inference.registry import ModelEntry
from app.inference.tiling import choose_plan, segment_tiled
from app.jobs.files import (
    CONFIDENCE,
    LABELS,
    RESULT_CONFIDENCE,
    RESULT_PNG,
    RESULT_TIFF,
    LabelFile,
)


def shared_model(
    model: ModelEntry, executor: Executor, admission: Admission, should_stop: Callable[[], bool]
) -> ModelEntry:
    """The model as a job runs it: each session run queued on the service's inference
    workers behind synchronous requests, holding its batch's pixels in the budget."""
    runner = model.runner
    if runner is None:
        return model

    def run(output: str, x: np.ndarray) -> np.ndarray:
        pixels = int(x.shape[0]) * int(x.shape[2]) * int(x.shape[3])
        with admission.pixels_for_background(pixels, should_stop):
            return executor.submit(runner, output, x).result()

    return dataclasses.replace(model, runner=run, batcher=None)


def segment_job(
    model: ModelEntry,
    source: np.ndarray | TiffRegions,
    folder: Path,
    options: dict[str, Any],
    tiles_done: int,
    settings: Settings,
    stop: Callable[[], bool],
    progress: Callable[[int, int], None],
) -> None:
    """Segment `source` into the job's folder, from tile `tiles_done` on; `progress(done,
    total)` is called once the maps on disk hold those tiles (and may record them)."""
    height, width = source.shape[:2]
    plan = choose_plan(
        model.spec,
        height,
        width,
        settings.whole_image_max_pixels,
        "auto",
        options.get("tile_size"),
        options.get("tile_overlap"),
        model.tile_batch,
    )

    tta, with_confidence = bool(options.get("tta")), bool(options.get("confidence"))
    with (
        LabelFile(folder / LABELS, height, width) as labels,
        LabelFile(folder / CONFIDENCE, height, width)
        if with_confidence
        else nullcontext() as confidence,
    ):
        maps = [labels] + ([confidence] if confidence is not None else [])
        if plan is None:
            pixels = source if isinstance(source, np.ndarray) else source.read(0, height, 0, width)
            result = segment(model, pixels, confidence=with_confidence, tta=tta, should_stop=stop)
            labels.array[:] = result.labels
            if confidence is not None and result.confidence is not None:
                confidence.array[:] = result.confidence
            for done_map in maps:
                done_map.flush()
            progress(1, 1)
        else:

            def flushed(done: int, total: int) -> None:
                for done_map in maps:  # the maps on disk first, then the count
                    done_map.flush()
                progress(done, total)

            segment_tiled(
                model,
                source,
                plan,
                confidence=with_confidence,
                tta=tta,
                should_stop=stop,
                labels_out=labels.array,
                confidence_out=confidence.array if confidence is not None else None,
                first_tile=tiles_done,
                on_progress=flushed,
            )
        if height * width <= settings.max_pixels:
            png = palette_png(np.asarray(labels.array), model.spec.palette)
            (folder / RESULT_PNG).write_bytes(png)
            labels.flush()
        info = source.info() if isinstance(source, TiffRegions) else None
        if isinstance(source, TiffRegions) or height * width > settings.max_pixels:
            partial = folder / (RESULT_TIFF + ".part")
            write_class_map_tiff(partial, labels.band, height, width, model.spec.palette, info)
            partial.replace(folder / RESULT_TIFF)
        if confidence is not None:
            partial = folder / (RESULT_CONFIDENCE + ".part")
            write_class_map_tiff(partial, confidence.band, height, width, None, info)
            partial.replace(folder / RESULT_CONFIDENCE)
