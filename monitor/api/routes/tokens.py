"""API tokens over HTTP (role admin): create (shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from tuneloop.monitor import auth, collect
from tuneloop.monitor.api.deps import Admin, RuntimeDep
from tuneloop.monitor.api.schemas import TokenCreate, TokenCreated, TokenInfo

router = APIRouter(prefix="/v1", tags=["collect", "admin"])  # listed under both in the schema


@router.post("/tokens", status_code=201, response_model=TokenCreated,
             summary="Create an API token (shown once)")
def create_token(body: TokenCreate, _: Admin, rt: RuntimeDep) -> TokenCreated:
    token = auth.create_token(rt.store, body.role, body.name)
    rt.tokens.refresh()
    return TokenCreated(token=token, name=body.name or body.role, role=body.role)


@router.get("/tokens", response_model=list[TokenInfo], summary="Token names and roles")
def get_tokens(_: Admin, rt: RuntimeDep) -> list[dict[str, Any]]:
    return [{k: None if collect.missing(v) else v for k, v in t.items()} for t in auth.list_tokens(rt.store)]


@router.delete("/tokens/{name}", summary="Revoke every active token with this name")
def delete_token(name: Annotated[str, Path(max_length=128)], _: Admin, rt: RuntimeDep) -> dict[str, int]:
    n = auth.revoke_token(rt.store, name)
    rt.tokens.refresh()
    return {"revoked": n}
