"""Gateway authentication and authorisation over real HTTP: keys, JWTs, admin rights, audit, no leaks."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from rerankd.gateway.settings import GatewaySettings
from support import Fleet, running_gateway

pytestmark = pytest.mark.timeout(120)

ADMIN = "bootstrap-admin-secret"
SECRET = "jwt-shared-secret-long-enough-for-hs256-and-hs512-0123456789abcdef-0123456789"
ISSUER, AUDIENCE = "https://issuer.test", "rerankd"
BODY = {"query": "q", "documents": ["a", "b"]}


@pytest.fixture(scope="module")
def gateway(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("auth")
    settings = GatewaySettings(upstreams=[fleet.urls[2]], database_url=f"sqlite:///{tmp / 'gw.db'}",
                               admin_key=ADMIN, jwt_secret=SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE,
                               key_cache_seconds=60)
    with running_gateway(settings) as url:
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_key(gateway: str, name: str, **extra: Any) -> str:
    response = httpx.post(f"{gateway}/admin/keys", json={"name": name, **extra}, headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    return response.json()["key"]


def token(**overrides: Any) -> str:
    now = int(time.time())
    claims = {"sub": "svc-search", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **overrides}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def unsigned(**claims: Any) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    payload = {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300, **claims}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


def rerank(gateway: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{gateway}/v1/rerank", json=BODY, headers=headers, timeout=30)


def test_a_valid_key_is_served(gateway: str) -> None:
    assert rerank(gateway, bearer(create_key(gateway, "valid"))).status_code == 200


@pytest.mark.parametrize(("headers", "fragment"), [
    ({}, "missing credentials"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed Authorization"),
    ({"Authorization": "Bearer"}, "malformed Authorization"),
    ({"Authorization": "Bearer not-a-key"}, "malformed API key"),
    ({"Authorization": "Bearer rk-this-key-was-never-issued"}, "invalid or revoked"),
])
def test_missing_malformed_and_wrong_keys_are_401(gateway: str, headers: dict[str, str], fragment: str) -> None:
    response = rerank(gateway, headers)
    assert response.status_code == 401
    assert fragment in response.json()["error"]["message"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_invalid_body_from_a_stranger_is_401_not_422(gateway: str) -> None:
    response = httpx.post(f"{gateway}/v1/rerank", json={"query": 5})
    assert response.status_code == 401


def test_a_revoked_key_is_refused_at_once_even_while_cached(gateway: str) -> None:
    key = create_key(gateway, "to-revoke")
    assert rerank(gateway, bearer(key)).status_code == 200  # now cached for 60 s
    revoked = httpx.delete(f"{gateway}/admin/keys/to-revoke", headers=bearer(ADMIN))
    assert revoked.status_code == 200
    response = rerank(gateway, bearer(key))
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]
    assert httpx.delete(f"{gateway}/admin/keys/to-revoke", headers=bearer(ADMIN)).status_code == 404


def test_a_valid_jwt_is_served_and_billed_to_its_subject(gateway: str) -> None:
    assert rerank(gateway, bearer(token(sub="svc-a"))).status_code == 200
    usage = httpx.get(f"{gateway}/v1/usage", headers=bearer(token(sub="svc-a"))).json()
    assert usage["key"] == "jwt:svc-a"


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda: token(exp=int(time.time()) - 3600), "expired"),
    (lambda: token(nbf=int(time.time()) + 3600), "not yet valid"),
    (lambda: token(aud="someone-else"), "audience"),
    (lambda: token(iss="https://evil.test"), "issuer"),
    (lambda: unsigned(), "unsigned"),
    (lambda: jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60},
                        "a-different-secret-of-the-same-good-length-0123456789", algorithm="HS256"), "signature"),
    (lambda: token()[:-4] + "AAAA", "signature"),
    (lambda: jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}, SECRET,
                        algorithm="HS512"), "algorithm"),
])
def test_bad_jwts_are_401_with_the_reason(gateway: str, make: Any, fragment: str) -> None:
    response = rerank(gateway, bearer(make()))
    assert response.status_code == 401, response.text
    assert fragment in response.json()["error"]["message"].lower()


def test_admin_routes_need_admin_rights(gateway: str) -> None:
    user = create_key(gateway, "plain-user")
    for method, path in [("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/upstreams"),
                         ("GET", "/admin/usage"), ("DELETE", "/admin/keys/valid"), ("GET", "/admin/audit")]:
        response = httpx.request(method, f"{gateway}{path}", headers=bearer(user), json={"name": "x"})
        assert response.status_code == 403, (method, path, response.text)
        assert httpx.request(method, f"{gateway}{path}").status_code == 401
        assert httpx.request(method, f"{gateway}{path}", headers=bearer(token())).status_code == 403
    admin_key = create_key(gateway, "second-admin", admin=True)
    assert httpx.get(f"{gateway}/admin/keys", headers=bearer(admin_key)).status_code == 200
    assert httpx.get(f"{gateway}/admin/keys", headers=bearer(token(rerankd_admin=True))).status_code == 200


def test_key_listing_never_shows_keys_and_creation_is_audited(gateway: str) -> None:
    key = create_key(gateway, "audited")
    listing = httpx.get(f"{gateway}/admin/keys", headers=bearer(ADMIN))
    assert key not in listing.text and "key_hash" not in listing.text
    assert {"name": "audited"}.items() <= next(k for k in listing.json() if k["name"] == "audited").items()
    duplicate = httpx.post(f"{gateway}/admin/keys", json={"name": "audited"}, headers=bearer(ADMIN))
    assert duplicate.status_code == 409
    events = httpx.get(f"{gateway}/admin/audit", headers=bearer(ADMIN)).json()
    assert any(e["actor"] == "admin" and e["action"] == "key.create" and e["target"] == "audited"
               for e in events)


def test_credentials_never_reach_logs_or_metrics(gateway: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = create_key(gateway, "secretive")
    good_jwt = token(sub="quiet")
    rerank(gateway, bearer(key))
    rerank(gateway, bearer(key[:-2] + "xx"))
    rerank(gateway, bearer(good_jwt))
    rerank(gateway, bearer(ADMIN + "x"))
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    metrics = httpx.get(f"{gateway}/metrics").text
    for secret in (key, key[:-2] + "xx", good_jwt, ADMIN, SECRET):
        assert secret not in logged
        assert secret not in metrics
    assert 'rerankd_gateway_auth_failures_total{reason="invalid_key"}' in metrics
    assert "secretive" in logged  # the key's name identifies the caller in the access log


def test_a_key_created_with_the_cli_works_on_the_gateway(gateway: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rerankd.cli import cli

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(cli, ["keys", "create", "--name", "cli-made", "--rpm", "7", "--database-url", db])
    assert result.exit_code == 0, result.output
    plaintext = result.stdout.strip().splitlines()[0]
    assert plaintext.startswith("rk-")
    listing = CliRunner().invoke(cli, ["keys", "list", "--json", "--database-url", db])
    row = json.loads(listing.stdout.strip().splitlines()[0])
    assert row["name"] == "cli-made" and row["rpm"] == 7 and plaintext not in listing.stdout
    assert CliRunner().invoke(cli, ["keys", "revoke", "cli-made", "--database-url", db]).exit_code == 0
    assert CliRunner().invoke(cli, ["keys", "revoke", "cli-made", "--database-url", db]).exit_code == 1
    duplicate = CliRunner().invoke(cli, ["keys", "create", "--name", "cli-made", "--database-url", db])
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
