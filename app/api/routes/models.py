from __future__ import annotations

from fastapi import APIRouter, Path

from app.api.deps import RegistryDep
from app.errors import PROBLEM_CONTENT, ModelNotFound
from app.inference.registry import ModelEntry
from app.schemas import ModelInfo, ModelList

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    responses={404: {"description": "Unknown model", **PROBLEM_CONTENT}},
)

ModelName = Path(description="Model name, as listed by GET /v1/models", examples=["unet-isbi"])


def _info(entry: ModelEntry) -> ModelInfo:
    assert entry.spec is not None
    return ModelInfo(
        state=entry.state.value, providers=entry.providers, file=entry.file, spec=entry.spec
    )


@router.get("", response_model=ModelList, summary="Every served model with its metadata")
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(models=[_info(e) for e in registry.served()])


@router.get("/{name}", response_model=ModelInfo, summary="One model's metadata and providers")
async def get_model(registry: RegistryDep, name: str = ModelName) -> ModelInfo:
    for entry in registry.served():
        if entry.name == name:
            return _info(entry)
    raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
