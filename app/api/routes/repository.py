"""Triton's model repository extension: list the model directory, load and unload models.

Behind SEG_ADMIN_KEYS (presented like SEG_API_KEYS: `Authorization: Bearer <key>` or
`X-API-Key`), and off (404) when none is set. Loading reads the directory again for that
model: a new or changed file is loaded and warmed up before it takes traffic, and one that
fails leaves what served before serving."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request

from app.api.deps import RegistryDep
from app.api.security import key_matches, presented_key
from app.config import Settings
from app.errors import V2_ERROR_CONTENT, AdminKeyRequired, LoadFailed, RepositoryOff
from app.inference.registry import ModelState, shown


def require_admin(request: Request) -> None:
    settings: Settings = request.app.state.settings
    keys = settings.admin_key_list
    if not keys:
        raise RepositoryOff("the repository API is off: set SEG_ADMIN_KEYS to turn it on")
    candidate = presented_key(request)
    if candidate is None or not key_matches(candidate, keys):
        detail = "an admin key (SEG_ADMIN_KEYS) is required: Authorization: Bearer <key>"
        if candidate is not None:
            detail = "the admin key is not valid"
        raise AdminKeyRequired(detail, {"WWW-Authenticate": 'Bearer realm="segserve-admin"'})


router = APIRouter(
    prefix="/repository",
    tags=["model repository (v2)"],
    dependencies=[Depends(require_admin)],
    responses={
        401: {"description": "No valid admin key (SEG_ADMIN_KEYS)", **V2_ERROR_CONTENT},
        404: {"description": "Unknown model, or the API is off", **V2_ERROR_CONTENT},
    },
)


@router.post("/index", summary="Every model version in SEG_MODEL_DIR, with its state")
async def index(
    registry: RegistryDep,
    body: Annotated[dict[str, Any] | None, Body(description='{"ready": true}: ready only')] = None,
) -> list[dict[str, Any]]:
    rows = await asyncio.to_thread(registry.index)
    if body and body.get("ready") is True:
        rows = [r for r in rows if r["state"] == "READY"]
    return rows


@router.post(
    "/models/{name}/load",
    summary="Load (or reload) a model from SEG_MODEL_DIR",
    responses={400: {"description": "The model failed to load", **V2_ERROR_CONTENT}},
)
async def load(registry: RegistryDep, name: str) -> dict[str, Any]:
    await asyncio.to_thread(registry.load_model, name)
    failed = [s for s in registry.statuses if s.name == name and s.state is ModelState.failed]
    if failed:
        reasons = "; ".join(f"{s.file}: {s.reason}" for s in failed)
        raise LoadFailed(f"model {shown(name)!r} failed to load: {reasons}")
    return {}


@router.post("/models/{name}/unload", summary="Stop serving every version of a model")
async def unload(registry: RegistryDep, name: str) -> dict[str, Any]:
    await asyncio.to_thread(registry.unload_model, name)
    return {}
