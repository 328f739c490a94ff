from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import RegistryDep
from app.schemas import ModelStatus, ReadinessReport

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", summary="Liveness: 200 while the process serves")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/ready",
    summary="Readiness: 200 when every model is loaded and warmed up, else 503",
    response_model=ReadinessReport,
    responses={503: {"model": ReadinessReport, "description": "Not ready; see models"}},
)
async def ready(registry: RegistryDep) -> JSONResponse:
    report = ReadinessReport(
        ready=registry.ready,
        problem=registry.problem,
        models=[
            ModelStatus(
                name=e.name,
                file=e.file,
                state=e.state.value,
                reason=e.reason,
                providers=e.providers,
                version=e.version,
                precision=e.precision,
                note=e.note,
            )
            for e in registry.statuses
        ],
    )
    return JSONResponse(report.model_dump(mode="json"), status_code=200 if report.ready else 503)
