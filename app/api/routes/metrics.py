from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Every worker process's samples, added up, when SEG_PROCESSES runs several."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
