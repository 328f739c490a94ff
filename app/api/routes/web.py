"""The web page at `/` (static files shipped in the package, no CDN) and its sample images."""

from __future__ import annotations

from pathlib import Path as FilePath

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from app.api.deps import RegistryDep, SettingsDep
from app.config import Settings
from app.errors import ModelNotFound
from app.imaging.media_types import IMAGE_MEDIA_TYPES

STATIC_DIR = FilePath(__file__).resolve().parents[2] / "static"

router = APIRouter(tags=["web"])


class SampleList(BaseModel):
    models: list[str]


def sample_file(settings: Settings, model: str) -> FilePath | None:
    """`<samples_dir>/<model>.<ext>`; the name is matched against served models first, so no
    request path ever reaches the file system unchecked."""
    if settings.samples_dir is None:
        return None
    for suffix in IMAGE_MEDIA_TYPES:
        path = settings.samples_dir / f"{model}{suffix}"
        if path.is_file():
            return path
    return None


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))


@router.get("/v1/samples", response_model=SampleList, summary="Models with a sample image")
async def list_samples(registry: RegistryDep, settings: SettingsDep) -> SampleList:
    names = [e.name for e in registry.served() if sample_file(settings, e.name) is not None]
    return SampleList(models=names)


@router.get(
    "/v1/samples/{name}",
    response_class=FileResponse,
    summary="A model's sample image (SEG_SAMPLES_DIR)",
    responses={404: {"description": "No such model or no sample for it"}},
)
async def get_sample(
    registry: RegistryDep,
    settings: SettingsDep,
    name: str = Path(description="Model name"),
) -> FileResponse:
    served = {e.name for e in registry.served()}
    path = sample_file(settings, name) if name in served else None
    if path is None:
        raise ModelNotFound(f"no sample image for {name!r}; GET /v1/samples lists them")
    return FileResponse(path, media_type=IMAGE_MEDIA_TYPES[path.suffix.lower()])
