import io
import sys

import pytest

from segserve.progress import LineProgress, NoProgress, TqdmProgress, make_progress


def test_line_progress_counts_done_and_failed() -> None:
    stream = io.StringIO()
    bar = LineProgress(4, stream, width=8)
    for failed in (False, True, False, False):
        bar.update(failed)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r[........] 0/4 done, 0 failed")
    assert text.endswith("\r[########] 4/4 done, 1 failed\n")


def test_tqdm_when_importable_else_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_progress(False, 3), NoProgress)
    pytest.importorskip("tqdm")
    bar = make_progress(True, 3)
    assert isinstance(bar, TqdmProgress)
    bar.close()
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    bar = make_progress(True, 3)
    assert isinstance(bar, LineProgress)
    bar.close()
