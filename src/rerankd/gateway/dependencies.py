"""The FastAPI dependencies the gateway's routes share: its components, the caller, an admin caller.

Why lifespan state: the components exist only once the app's lifespan has opened them (database,
connections, health checks), after the routes were declared. Starlette hands what the lifespan yields
to every request as ``request.state``; :func:`components_of` is the one place that reads it, typed, so
no route reaches into a global or a shared dict.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rerankd.gateway.authenticate import Identity, identify, identify_admin
from rerankd.gateway.components import GatewayComponents

__all__ = ["COMPONENTS_STATE", "Admin", "Caller", "Components", "caller_of", "components_of"]

COMPONENTS_STATE = "gateway"  # the lifespan state's key
_IDENTITY_STATE = "identity"  # the request's caller, once known (per request: Starlette copies the state)


def components_of(request: Request) -> GatewayComponents:
    """The running gateway's components (set by the lifespan for every request)."""
    components: GatewayComponents = getattr(request.state, COMPONENTS_STATE)
    return components


Components = Annotated[GatewayComponents, Depends(components_of)]


async def caller_of(request: Request, components: GatewayComponents) -> Identity:
    """The request's authenticated caller (401 otherwise), identified once per request: the scoring routes'
    admission (:mod:`rerankd.gateway.admission`) asks before the body is parsed, the :data:`Caller` after."""
    state = request.scope["state"]
    known: Identity | None = state.get(_IDENTITY_STATE)
    if known is None:
        known = state[_IDENTITY_STATE] = await identify(request, components.auth)
    return known


async def _caller(request: Request, components: Components) -> Identity:
    return await caller_of(request, components)


async def _admin(request: Request, components: Components) -> Identity:
    return await identify_admin(request, components.auth)


Caller = Annotated[Identity, Depends(_caller)]
"""The authenticated caller (401 otherwise); a dependency, so it runs before body validation."""
Admin = Annotated[Identity, Depends(_admin)]
"""The authenticated caller with admin rights (401/403 otherwise)."""
