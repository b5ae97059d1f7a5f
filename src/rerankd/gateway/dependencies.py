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

__all__ = ["COMPONENTS_STATE", "Admin", "Caller", "Components", "components_of"]

COMPONENTS_STATE = "gateway"  # the lifespan state's key


def components_of(request: Request) -> GatewayComponents:
    """The running gateway's components (set by the lifespan for every request)."""
    components: GatewayComponents = getattr(request.state, COMPONENTS_STATE)
    return components


Components = Annotated[GatewayComponents, Depends(components_of)]


async def _caller(request: Request, components: Components) -> Identity:
    return await identify(request, components.auth)


async def _admin(request: Request, components: Components) -> Identity:
    return await identify_admin(request, components.auth)


Caller = Annotated[Identity, Depends(_caller)]
"""The authenticated caller (401 otherwise); a dependency, so it runs before body validation."""
Admin = Annotated[Identity, Depends(_admin)]
"""The authenticated caller with admin rights (401/403 otherwise)."""
