"""The web page at `/` in a real browser: Playwright driving Debian's headless chromium
against the real server process. A screenshot lands in artifacts/web-page.png."""

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.app.conftest import png_bytes, running_server
from tests.app.test_api import grey_pattern

ROOT = Path(__file__).resolve().parents[2]
ISBI_SLICE = ROOT.parent / "shared" / "datasets" / "isbi2012" / "images" / "22.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "artifacts"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)


@contextlib.contextmanager
def open_page(model_dir: Path, **env: str) -> Iterator[tuple[str, Page]]:
    with (
        running_server(model_dir, **env) as (base, _),
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 900})
            tab.goto(base)
            yield base, tab
        finally:
            browser.close()


@pytest.fixture
def page(model_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Page]]:
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "tiny-grey.png").write_bytes(png_bytes(grey_pattern(64, 80)))
    with open_page(model_dir, SEG_SAMPLES_DIR=str(samples)) as opened:
        yield opened


def class_map_colours(tab: Page) -> list[list[int]]:
    """The distinct RGB colours drawn on the class-map canvas."""
    colours: list[list[int]] = tab.evaluate(
        """() => {
            const canvas = document.getElementById("classmap");
            const context = canvas.getContext("2d");
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            const seen = new Map();
            for (let i = 0; i < data.length; i += 4) {
                seen.set(`${data[i]},${data[i + 1]},${data[i + 2]}`, 1);
            }
            return [...seen.keys()].map((k) => k.split(",").map(Number));
        }"""
    )
    return sorted(colours)


def test_upload_shows_map_overlay_legend_timing_and_provider(
    page: tuple[str, Page], tmp_path: Path
) -> None:
    _, tab = page
    upload = tmp_path / "upload.png"
    if ISBI_SLICE.is_file():
        upload.write_bytes(ISBI_SLICE.read_bytes())  # a real EM slice, grey like tiny-grey wants
    else:
        upload.write_bytes(png_bytes(grey_pattern(96, 128)))
    tab.select_option("#model", "tiny-grey")
    tab.set_input_files("#file", str(upload))
    tab.wait_for_selector("#result:not([hidden])")
    legend = tab.inner_text("#legend tbody")
    assert "bright" in legend and "dark" in legend and "%" in legend
    # Both classes of the threshold model are on the map, in the model's palette colours.
    assert class_map_colours(tab) == [[0, 0, 255], [255, 255, 0]]
    timing = tab.inner_text("#timing")
    assert "inference" in timing and "CPUExecutionProvider" in timing
    tab.fill("#opacity", "80")
    opacity = tab.eval_on_selector("#overlay", "c => c.style.opacity")
    assert float(opacity) == pytest.approx(0.8)
    with tab.expect_download() as download:
        tab.click("#download-png")
    assert download.value.suggested_filename == "upload.tiny-grey.png"
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)


def test_error_from_the_service_is_shown(page: tuple[str, Page], tmp_path: Path) -> None:
    _, tab = page
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"plain text posing as a png")
    tab.set_input_files("#file", str(bad))
    tab.wait_for_selector("#error:not([hidden])")
    message = tab.inner_text("#error")
    assert message.startswith("Bad Request:") and "image" in message.lower()
    assert tab.is_hidden("#result")


def test_sample_button_segments_with_one_click(page: tuple[str, Page]) -> None:
    _, tab = page
    tab.click("text=Try a sample (tiny-grey)")
    tab.wait_for_selector("#result:not([hidden])")
    assert tab.get_attribute("#result", "data-model") == "tiny-grey"
    assert len(class_map_colours(tab)) == 2


def test_api_key_typed_into_the_page_unlocks_the_service(model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(grey_pattern(40, 50)))
    with open_page(model_dir, SEG_API_KEYS="page-key") as (_, tab):
        tab.wait_for_selector("#error:not([hidden])")
        assert "Unauthorized" in tab.inner_text("#error")
        tab.fill("#api-key", "page-key")
        tab.dispatch_event("#api-key", "change")
        tab.wait_for_selector("#model option[value=tiny-grey]", state="attached")
        tab.select_option("#model", "tiny-grey")
        tab.set_input_files("#file", str(image))
        tab.wait_for_selector("#result:not([hidden])")
        assert tab.is_hidden("#error")


def test_a_large_image_goes_through_a_job_with_a_progress_bar(
    page: tuple[str, Page], tmp_path: Path
) -> None:
    _, tab = page
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(grey_pattern(1100, 1000)))  # above the 1024 x 1024 one pass
    tab.select_option("#model", "tiny-grey")
    seen_progress = []
    tab.on("request", lambda request: seen_progress.append(request.url))
    tab.set_input_files("#file", str(big))
    tab.wait_for_selector("#result:not([hidden])", timeout=60_000)
    assert any(url.endswith("/v1/models/tiny-grey/jobs") for url in seen_progress)
    assert any("/result?format=json" in url for url in seen_progress)
    assert class_map_colours(tab) == [[0, 0, 255], [255, 255, 0]]
    assert "job of" in tab.inner_text("#timing")
    assert "bright" in tab.inner_text("#legend tbody")
    assert tab.is_hidden("#progress")


def test_a_large_tiff_goes_through_a_job_and_its_map_is_saved_as_tiff(
    page: tuple[str, Page], tmp_path: Path
) -> None:
    import numpy as np
    import tifffile

    _, tab = page
    pixels = np.random.default_rng(0).integers(0, 256, (4200, 4100), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "montage.tif", pixels, tile=(512, 512))  # 17 MB, not drawable
    tab.select_option("#model", "tiny-grey")
    with tab.expect_download(timeout=120_000) as download:
        tab.set_input_files("#file", str(tmp_path / "montage.tif"))
    assert download.value.suggested_filename == "montage.tiny-grey.tif"
    saved = tmp_path / "saved.tif"
    download.value.save_as(saved)
    assert np.array_equal(tifffile.imread(saved), np.where(pixels > 127, 0, 1))
    assert "saved as a TIFF" in tab.inner_text("#status")
