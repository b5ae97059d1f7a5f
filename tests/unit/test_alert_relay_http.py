"""The alert relay answers through the shared HTTP room: request ids, security headers, body cap, error body.

Driven in process over ASGI; none of these answers needs the robots (the app's lifespan never runs).
"""

from __future__ import annotations

import httpx

from rerankd.http import error_response
from rerankd.observability.alert_delivery import Robot
from rerankd.observability.alert_relay import RelaySettings, create_relay_app

TOKEN = "relay-unit-token"


def client() -> httpx.AsyncClient:
    app = create_relay_app(RelaySettings(robots=(Robot("wecom", "http://robot"),), auth_token=TOKEN,
                                         max_body_bytes=2048))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay")


async def test_a_wrong_token_gets_the_rooms_401() -> None:
    async with client() as relay:
        refused = await relay.post("/alerts", json={"alerts": []}, headers={"X-Request-ID": "am-1"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.content == error_response(401, "missing or wrong bearer token (see --auth-token)").body
    assert refused.headers["x-request-id"] == "am-1" and refused.headers["x-content-type-options"] == "nosniff"


async def test_a_body_over_the_cap_is_413_and_errors_name_what_to_fix() -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with client() as relay:
        too_big = await relay.post("/alerts", content=b"{" + b" " * 4096 + b"}", headers=auth)
        unknown = await relay.post("/alerts/slack", json={"alerts": []}, headers=auth)
        invalid = await relay.post("/alerts", json={"alerts": "not a list"}, headers=auth)
        health = await relay.get("/health")
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "payload_too_large"
    assert unknown.status_code == 404 and "no 'slack' robot configured" in unknown.json()["error"]["message"]
    assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "alerts"
    assert health.status_code == 200 and "default-src 'none'" in health.headers["content-security-policy"]
    assert len(health.headers["x-request-id"]) == 32
