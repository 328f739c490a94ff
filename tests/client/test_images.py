import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.imaging.media_types import IMAGE_MEDIA_TYPES as SERVICE_TABLE
from segserve import UnexpectedAnswer
from segserve.images import IMAGE_MEDIA_TYPES, class_map
from tests.client.mock_service import palette_png

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_sends_the_media_types_the_service_reads() -> None:
    assert IMAGE_MEDIA_TYPES == SERVICE_TABLE


def test_class_map_is_the_palette_indices_not_the_colours() -> None:
    labels = np.array([[0, 1], [2, 2]], np.uint8)
    decoded = class_map(palette_png(labels))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, labels)
    rgb = io.BytesIO()
    Image.new("RGB", (2, 2)).save(rgb, format="PNG")
    with pytest.raises(UnexpectedAnswer, match="palette"):
        class_map(rgb.getvalue())
    with pytest.raises(UnexpectedAnswer):
        class_map(b"GIF89a not png")


def test_a_users_own_app_package_does_not_shadow_the_client(tmp_path: Path) -> None:
    """The reason the client is `segserve`, not `app.client`: a project's `app` comes first."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("raise ImportError('the user app')\n")
    code = "import segserve, numpy; print(segserve.Client('http://x').url)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "http://x"
