"""JWT verification against a real JWKS server on 127.0.0.1: claims, algorithm attacks, caching, rotation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rerankd.gateway import jwt_auth
from rerankd.gateway.jwt_auth import JwtError, JwtSettings, JwtVerifier, is_probably_jwt
from support import ServerThread

pytestmark = pytest.mark.timeout(60)

ISSUER = "https://issuer.test"
AUDIENCE = "rerankd"
SECRET = "a-shared-secret-long-enough-for-hs256-and-even-for-hs512-0123456789abcdef"


@dataclass
class SigningKey:
    kid: str
    private: Any
    alg: str

    def jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg.startswith("RS") else ECAlgorithm
        data = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any] | None = None, **headers: Any) -> str:
        return jwt.encode(make_claims(**(claims or {})), self.private, algorithm=self.alg,
                          headers={"kid": self.kid, **headers})


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")


def make_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj).encode())


@dataclass
class JwksServer:
    """Serves ``/.well-known/jwks.json`` from ``keys``; counts fetches; ``status`` != 200 simulates an outage."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    status: int = 200
    server: ServerThread | None = None

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()


@pytest.fixture(scope="module")
def rsa_a() -> SigningKey:
    return rsa_key("key-a")


@pytest.fixture(scope="module")
def rsa_b() -> SigningKey:
    return rsa_key("key-b")


@pytest.fixture(scope="module")
def ec_c() -> SigningKey:
    return ec_key("key-c")


@pytest.fixture
def jwks(rsa_a: SigningKey, ec_c: SigningKey) -> Iterator[JwksServer]:
    state = JwksServer(keys=[rsa_a.jwk(), ec_c.jwk()])

    async def serve(request: Request) -> JSONResponse:
        state.fetches += 1
        if state.status != 200:
            return JSONResponse({"error": "down"}, status_code=state.status)
        return JSONResponse({"keys": list(state.keys)})

    app = Starlette(routes=[Route("/.well-known/jwks.json", serve)])
    server = ServerThread(app, what="JWKS server").start()
    state.url, state.server = f"{server.url}/.well-known/jwks.json", server
    yield state
    state.stop()


def jwks_settings(server: JwksServer, **overrides: Any) -> JwtSettings:
    return JwtSettings(**{"jwks_url": server.url, "issuer": ISSUER, "audience": AUDIENCE,
                          "allow_insecure_jwks_url": True, **overrides})


@pytest.fixture
async def verifier(jwks: JwksServer) -> AsyncIterator[JwtVerifier]:
    async with JwtVerifier(jwks_settings(jwks)) as v:
        yield v


async def refused(v: JwtVerifier, token: str, fragment: str) -> JwtError:
    with pytest.raises(JwtError) as info:
        await v.verify(token)
    message = str(info.value)
    assert fragment in message
    if len(token) > 8:
        for part in token.split("."):
            assert not part or part not in message  # the token never leaks into the message
    return info.value


# -- happy paths ----------------------------------------------------------------------------------------------


async def test_valid_rs256_token(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    identity = await verifier.verify(rsa_a.sign())
    assert identity.subject == "alice"
    assert identity.key_id == "jwt:alice"
    assert identity.is_admin is False
    assert identity.claims["iss"] == ISSUER


@pytest.mark.parametrize("extra", [{"rerankd_admin": True}, {"roles": ["reader", "admin"]},
                                   {"scope": "rerank admin"}, {"rerankd_admin": "true"}])
async def test_admin_grants(verifier: JwtVerifier, rsa_a: SigningKey, extra: dict[str, Any]) -> None:
    assert (await verifier.verify(rsa_a.sign({"sub": "root", **extra}))).is_admin is True


@pytest.mark.parametrize("extra", [{"rerankd_admin": False}, {"rerankd_admin": "false"}, {"roles": "administrator"},
                                   {"scope": "rerank"}])
async def test_not_admin(verifier: JwtVerifier, rsa_a: SigningKey, extra: dict[str, Any]) -> None:
    assert (await verifier.verify(rsa_a.sign(extra))).is_admin is False


async def test_valid_es256_token(verifier: JwtVerifier, ec_c: SigningKey) -> None:
    assert (await verifier.verify(ec_c.sign({"sub": "bob"}))).key_id == "jwt:bob"


async def test_leeway_accepts_slightly_expired(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    assert (await verifier.verify(rsa_a.sign({"exp": int(time.time()) - 5}))).subject == "alice"


# -- claim checks ---------------------------------------------------------------------------------------------


async def test_expired(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    await refused(verifier, rsa_a.sign({"exp": int(time.time()) - 120}), "expired")


async def test_not_yet_valid(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    await refused(verifier, rsa_a.sign({"nbf": int(time.time()) + 300}), "not yet valid")


async def test_wrong_audience(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    await refused(verifier, rsa_a.sign({"aud": "someone-else"}), "audience")


async def test_wrong_issuer(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    await refused(verifier, rsa_a.sign({"iss": "https://evil.test"}), "issuer")


async def test_missing_sub(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    await refused(verifier, rsa_a.sign({"sub": None}), "'sub'")


async def test_missing_exp(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    await refused(verifier, rsa_a.sign({"exp": None}), "'exp'")


# -- algorithm attacks ----------------------------------------------------------------------------------------


async def test_alg_none(verifier: JwtVerifier) -> None:
    token = f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(make_claims())}."
    await refused(verifier, token, "unsigned")
    token = f"{b64json({'alg': 'NoNe', 'kid': 'key-a'})}.{b64json(make_claims())}."
    await refused(verifier, token, "unsigned")


async def test_hs256_signed_with_rsa_public_pem(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    pem = rsa_a.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': 'key-a'})}.{b64json(make_claims())}"
    signature = b64url(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    await refused(verifier, f"{signing_input}.{signature}", "not accepted")


def test_jwks_mode_refuses_hmac_algorithms(jwks: JwksServer) -> None:
    with pytest.raises(ValueError, match="HS256"):
        jwks_settings(jwks, algorithms=("RS256", "HS256"))
    with pytest.raises(ValueError, match="RS256"):
        JwtSettings(secret=SECRET, algorithms=("RS256",))
    with pytest.raises(ValueError):
        jwks_settings(jwks, algorithms=("none",))


async def test_algorithm_outside_allow_list(jwks: JwksServer, ec_c: SigningKey) -> None:
    async with JwtVerifier(jwks_settings(jwks, algorithms=("RS256",))) as v:
        await refused(v, ec_c.sign(), "not accepted")


async def test_algorithm_must_fit_the_key(verifier: JwtVerifier, ec_c: SigningKey, rsa_a: SigningKey) -> None:
    # An RS256 token naming the EC key's kid: allowed algorithm, wrong key type.
    token = jwt.encode(make_claims(), rsa_a.private, algorithm="RS256", headers={"kid": ec_c.kid})
    await refused(verifier, token, "does not match its key")


async def test_other_key_same_kid(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    impostor = SigningKey(rsa_a.kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    await refused(verifier, impostor.sign(), "signature is invalid")


async def test_tampered_payload(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    header, _, signature = rsa_a.sign().split(".")
    forged = f"{header}.{b64json(make_claims(sub='mallory', rerankd_admin=True))}.{signature}"
    await refused(verifier, forged, "signature is invalid")


async def test_symmetric_jwks_keys_are_ignored(jwks: JwksServer) -> None:
    jwks.keys = [{"kty": "oct", "kid": "sym", "k": b64url(SECRET.encode()), "alg": "HS256"}]
    async with JwtVerifier(jwks_settings(jwks)) as v:
        token = jwt.encode(make_claims(), SECRET, algorithm="HS256", headers={"kid": "sym"})
        await refused(v, token, "not accepted")
        token = SigningKey("sym", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256").sign()
        await refused(v, token, "unavailable")


# -- malformed input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "....", "rk-abc.def.ghi", "x" * 5000])
async def test_malformed(verifier: JwtVerifier, token: str) -> None:
    await refused(verifier, token, "malformed")


def test_is_probably_jwt(rsa_a: SigningKey) -> None:
    assert is_probably_jwt(rsa_a.sign())
    assert is_probably_jwt(f"{b64json({'alg': 'none'})}.{b64json({})}.")
    for token in ["", "abc", "a.b.c", "rk-" + "x" * 40, f"{b64json({'typ': 'JWT'})}.e30.sig", "a.b.c.d"]:
        assert not is_probably_jwt(token), token


# -- JWKS caching, rotation, outages --------------------------------------------------------------------------


async def test_jwks_cached(verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey, ec_c: SigningKey) -> None:
    for _ in range(5):
        await verifier.verify(rsa_a.sign())
        await verifier.verify(ec_c.sign())
    assert jwks.fetches == 1


async def test_concurrent_verifications_share_one_fetch(verifier: JwtVerifier, jwks: JwksServer,
                                                        rsa_a: SigningKey) -> None:
    token = rsa_a.sign()
    identities = await asyncio.gather(*(verifier.verify(token) for _ in range(25)))
    assert {i.subject for i in identities} == {"alice"}
    assert jwks.fetches == 1


async def test_unknown_kid_refetches_once_after_rotation(verifier: JwtVerifier, jwks: JwksServer,
                                                         rsa_a: SigningKey, rsa_b: SigningKey) -> None:
    await verifier.verify(rsa_a.sign())
    assert jwks.fetches == 1
    jwks.keys = [rsa_b.jwk()]  # the identity provider rotates: key-a is gone, key-b is new
    assert (await verifier.verify(rsa_b.sign({"sub": "carol"}))).subject == "carol"
    assert jwks.fetches == 2
    await verifier.verify(rsa_b.sign())
    assert jwks.fetches == 2


async def test_garbage_kids_are_rate_limited(verifier: JwtVerifier, jwks: JwksServer, rsa_a: SigningKey,
                                             rsa_b: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [time.monotonic()]
    monkeypatch.setattr(jwt_auth, "_clock", lambda: now[0])
    await verifier.verify(rsa_a.sign())
    garbage = [SigningKey(f"garbage-{i}", rsa_a.private, "RS256").sign() for i in range(30)]
    for token in garbage[:10]:
        await refused(verifier, token, "unknown key")
    await asyncio.gather(*(refused(verifier, token, "unknown key") for token in garbage[10:]))
    assert jwks.fetches == 2  # the initial fetch plus one refetch
    now[0] += 5
    jwks.keys = [rsa_a.jwk(), rsa_b.jwk()]
    await refused(verifier, rsa_b.sign(), "unknown key")  # still inside the 10 s window
    assert jwks.fetches == 2
    now[0] += jwt_auth.UNKNOWN_KID_REFETCH_INTERVAL
    assert (await verifier.verify(rsa_b.sign())).subject == "alice"
    assert jwks.fetches == 3


async def test_cache_expiry_refetches(jwks: JwksServer, rsa_a: SigningKey, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [time.monotonic()]
    monkeypatch.setattr(jwt_auth, "_clock", lambda: now[0])
    async with JwtVerifier(jwks_settings(jwks, jwks_cache_seconds=60)) as v:
        await v.verify(rsa_a.sign())
        now[0] += 59
        await v.verify(rsa_a.sign())
        assert jwks.fetches == 1
        now[0] += 2
        await v.verify(rsa_a.sign())
        assert jwks.fetches == 2


async def test_jwks_down_keeps_cached_keys(jwks: JwksServer, rsa_a: SigningKey) -> None:
    async with JwtVerifier(jwks_settings(jwks, jwks_cache_seconds=0)) as v:
        await v.verify(rsa_a.sign())
        jwks.status = 503
        assert (await v.verify(rsa_a.sign())).subject == "alice"
        assert jwks.fetches == 2
        jwks.stop()  # now nothing listens at all
        assert (await v.verify(rsa_a.sign())).subject == "alice"


async def test_jwks_down_without_cache(jwks: JwksServer, rsa_a: SigningKey) -> None:
    jwks.status = 500
    async with JwtVerifier(jwks_settings(jwks)) as v:
        await refused(v, rsa_a.sign(), "unavailable")
        jwks.status = 200
        assert (await v.verify(rsa_a.sign())).subject == "alice"


# -- shared-secret mode ---------------------------------------------------------------------------------------


async def test_hs256_shared_secret() -> None:
    async with JwtVerifier(JwtSettings(secret=SECRET, issuer=ISSUER, audience=AUDIENCE)) as v:
        token = jwt.encode(make_claims(rerankd_admin=True), SECRET, algorithm="HS256")
        identity = await v.verify(token)
        assert (identity.subject, identity.is_admin) == ("alice", True)
        wrong = jwt.encode(make_claims(), SECRET + "x", algorithm="HS256")
        await refused(v, wrong, "signature is invalid")
        await refused(v, jwt.encode(make_claims(), SECRET, algorithm="HS512"), "not accepted")


async def test_hs_mode_refuses_rs_tokens(rsa_a: SigningKey) -> None:
    async with JwtVerifier(JwtSettings(secret=SECRET)) as v:
        await refused(v, rsa_a.sign(), "not accepted")


def test_settings_need_exactly_one_key_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        JwtSettings()
    with pytest.raises(ValueError, match="exactly one"):
        JwtSettings(jwks_url="https://idp.test/jwks.json", secret=SECRET)
    assert JwtSettings(jwks_url="https://idp.test/jwks.json").algorithms == ("RS256", "ES256")
    assert JwtSettings(secret=SECRET).algorithms == ("HS256",)


# -- size and lifetime caps (hostile tokens and identity providers) -------------------------------------------


def test_plain_http_jwks_refused_unless_allowed() -> None:
    with pytest.raises(ValueError, match="plain http"):
        JwtSettings(jwks_url="http://idp.test/jwks.json")
    assert JwtSettings(jwks_url="http://idp.test/jwks.json", allow_insecure_jwks_url=True).jwks_url


async def test_oversized_token_refused_before_parsing(verifier: JwtVerifier, jwks: JwksServer,
                                                      rsa_a: SigningKey) -> None:
    huge = rsa_a.sign(make_claims(pad="x" * 1_000_000))
    await refused(verifier, huge, "longer than 8192 bytes")
    assert jwks.fetches == 0  # refused on its length alone: no JWKS fetch, no base64 or JSON work


@pytest.mark.parametrize("claims_at", [
    lambda now: {"exp": 10**20},
    lambda now: {"exp": now + 2 * 24 * 3600},
    lambda now: {"iat": now - 3 * 24 * 3600, "exp": now + 600},
], ids=["exp-1e20", "exp-in-two-days", "issued-three-days-before-exp"])
async def test_lifetime_over_the_cap_refused(verifier: JwtVerifier, rsa_a: SigningKey,
                                             claims_at: Callable[[int], dict[str, Any]]) -> None:
    # The times are taken when the test runs, not when it is collected: a long suite would find "exp" passed.
    await refused(verifier, rsa_a.sign(make_claims(**claims_at(int(time.time())))), "lifetime exceeds")


async def test_string_exp_refused(verifier: JwtVerifier, rsa_a: SigningKey) -> None:
    # PyJWT converts a numeric string with int(); a string is not a NumericDate (RFC 7519 §2).
    await refused(verifier, rsa_a.sign(make_claims(exp=str(int(time.time()) + 600))), "must be a number")


async def test_lifetime_cap_is_a_setting(jwks: JwksServer, rsa_a: SigningKey) -> None:
    async with JwtVerifier(jwks_settings(jwks, max_lifetime_seconds=7 * 24 * 3600)) as v:
        token = rsa_a.sign(make_claims(exp=int(time.time()) + 2 * 24 * 3600))
        assert (await v.verify(token)).subject == "alice"


async def test_jwks_with_too_many_keys_refused_with_one_log_line(
        jwks: JwksServer, rsa_a: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    jwks.keys = [{"kty": "RSA", "kid": f"junk-{i}", "n": "AQAB", "e": "AQAB"} for i in range(5000)]
    with caplog.at_level(logging.DEBUG, logger="rerankd.gateway.jwt_auth"):
        async with JwtVerifier(jwks_settings(jwks)) as v:
            await refused(v, rsa_a.sign(), "unavailable")
    lines = [r for r in caplog.records if r.name == "rerankd.gateway.jwt_auth"]
    assert len(lines) == 1 and "over the limit of 100" in lines[0].getMessage()


async def test_jwks_over_the_byte_cap_refused(jwks: JwksServer, rsa_a: SigningKey) -> None:
    jwks.keys = [rsa_a.jwk(), {"kty": "RSA", "kid": "padding", "n": "A" * 2_000_000, "e": "AQAB"}]
    async with JwtVerifier(jwks_settings(jwks)) as v:
        await refused(v, rsa_a.sign(), "unavailable")
    async with JwtVerifier(jwks_settings(jwks, max_jwks_bytes=4 * 1024 * 1024)) as v:
        assert (await v.verify(rsa_a.sign())).subject == "alice"


async def test_unusable_jwks_entries_log_one_line_per_fetch(
        jwks: JwksServer, rsa_a: SigningKey, caplog: pytest.LogCaptureFixture) -> None:
    jwks.keys = [rsa_a.jwk(), *({"kty": "oct", "k": "c2VjcmV0", "kid": f"hmac-{i}"} for i in range(20)),
                 {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}]
    with caplog.at_level(logging.DEBUG, logger="rerankd.gateway.jwt_auth"):
        async with JwtVerifier(jwks_settings(jwks)) as v:
            assert (await v.verify(rsa_a.sign())).subject == "alice"
    lines = [r for r in caplog.records if r.name == "rerankd.gateway.jwt_auth"]
    assert len(lines) == 1 and "1 usable keys, 21 skipped" in lines[0].getMessage()


async def test_jwks_parse_runs_off_the_event_loop(jwks: JwksServer, rsa_a: SigningKey,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    parsed_in: list[int] = []
    original = JwtVerifier._parse_jwks

    def recording(self: JwtVerifier, document: bytes) -> Any:
        parsed_in.append(threading.get_ident())
        return original(self, document)

    monkeypatch.setattr(JwtVerifier, "_parse_jwks", recording)
    async with JwtVerifier(jwks_settings(jwks)) as v:
        await v.verify(rsa_a.sign())
    assert parsed_in and loop_thread not in parsed_in
