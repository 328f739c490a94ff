from __future__ import annotations

from fastapi import APIRouter, Path

from app.api.deps import RegistryDep
from app.errors import PROBLEM_CONTENT
from app.inference.registry import ModelEntry
from app.schemas import ModelInfo, ModelList

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    responses={404: {"description": "Unknown model or version", **PROBLEM_CONTENT}},
)

ModelName = Path(description="Model name, as listed by GET /v1/models", examples=["unet-isbi"])
ModelVersion = Path(description="Model version, as listed by GET /v1/models", examples=["1"])


def _info(entry: ModelEntry, default: bool) -> ModelInfo:
    return ModelInfo(
        state="ready",
        providers=entry.providers,
        file=entry.file,
        spec=entry.spec,
        default=default,
        precision=entry.spec.precision,
        precisions=entry.variants,
        note=entry.note,
        outputs=["labels", "probabilities"] if entry.spec.has_scores else ["labels"],
    )


@router.get("", response_model=ModelList, summary="Every served model version with its metadata")
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(
        models=[
            _info(e, i == 0)
            for d in registry.served()
            for i, e in enumerate(registry.versions(d.name))
        ]
    )


@router.get("/{name}", response_model=ModelInfo, summary="One model's metadata and providers")
async def get_model(registry: RegistryDep, name: str = ModelName) -> ModelInfo:
    return _info(registry.get(name), True)


@router.get(
    "/{name}/versions/{version}",
    response_model=ModelInfo,
    summary="One model version's metadata and providers",
)
async def get_model_version(
    registry: RegistryDep, name: str = ModelName, version: str = ModelVersion
) -> ModelInfo:
    entry = registry.get(name, version)
    return _info(entry, entry is registry.get(name))
