"""``/admin/keys/{name_or_id}`` over real HTTP: an unknown key is a 404 of a *key*, naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rerankd.gateway.settings import GatewaySettings
from support import running_gateway

pytestmark = pytest.mark.timeout(60)

ADMIN = {"Authorization": "Bearer admin-keys-not-found-secret"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    database: Path = tmp_path_factory.mktemp("admin") / "gw.db"
    # No replica is needed for the admin routes (nothing listens on port 9).
    settings = GatewaySettings(upstreams=["http://127.0.0.1:9"], database_url=f"sqlite:///{database}",
                               admin_key=ADMIN["Authorization"].removeprefix("Bearer "))
    with running_gateway(settings) as url:
        yield url


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_unknown_key_is_key_not_found_naming_the_key(gateway: str, method: str) -> None:
    response = httpx.request(method, f"{gateway}/admin/keys/no-such-key", headers=ADMIN)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "key_not_found" and error["field"] == "name_or_id"
    assert "'no-such-key'" in error["message"] and "model" not in error["message"]


def test_a_known_key_is_shown_by_name_and_id_and_revoking_it_twice_is_key_not_found(gateway: str) -> None:
    created = httpx.post(f"{gateway}/admin/keys", json={"name": "shown", "rpm": 5}, headers=ADMIN)
    assert created.status_code == 201
    key_id = created.json()["id"]
    for name_or_id in ("shown", key_id):
        shown = httpx.get(f"{gateway}/admin/keys/{name_or_id}", headers=ADMIN)
        assert shown.status_code == 200
        assert {"id": key_id, "name": "shown", "rpm": 5, "revoked_at": None}.items() <= shown.json().items()
        assert "key" not in shown.json()  # the key itself is never shown again
    assert httpx.delete(f"{gateway}/admin/keys/shown", headers=ADMIN).status_code == 200
    assert httpx.get(f"{gateway}/admin/keys/shown", headers=ADMIN).json()["revoked_at"] is not None
    again = httpx.delete(f"{gateway}/admin/keys/shown", headers=ADMIN)
    assert again.status_code == 404 and again.json()["error"]["type"] == "key_not_found"
    assert "no active API key" in again.json()["error"]["message"]


def test_a_key_lookup_needs_an_admin_credential(gateway: str) -> None:
    created = httpx.post(f"{gateway}/admin/keys", json={"name": "plain-user"}, headers=ADMIN).json()
    user = {"Authorization": f"Bearer {created['key']}"}
    assert httpx.get(f"{gateway}/admin/keys/plain-user", headers=user).status_code == 403
    assert httpx.get(f"{gateway}/admin/keys/no-such-key").status_code == 401
