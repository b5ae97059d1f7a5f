"""JWT bearer tokens for the gateway: checked against a JWKS URL or an HS shared secret.

Why the algorithm is pinned per key and not taken from the token: the classic JWT attacks (``alg: none``,
and an HS256 token "signed" with the RSA public key as HMAC secret) both work by letting the token pick
how it is verified. Here the token's ``alg`` must be in the configured allow-list *and* fit the key it
names: a JWKS only ever yields public RSA/EC/OKP keys (``oct`` entries are dropped), and JWKS mode refuses
HS algorithms at construction, so no public key can ever end up as an HMAC secret.

Why the JWKS cache refetches on an unknown ``kid``, but at most once per 10 s: an identity provider that
rotates keys starts signing with the new ``kid`` before our cache expires, so one early refetch saves a
window of rejected logins; the rate limit keeps a stream of garbage ``kid`` values from turning every
request into a request to the identity provider.

Why every size is capped (token bytes, JWKS bytes and keys, token lifetime): a token or a JWKS document is
input from outside. A 1 MB token costs base64 and JSON work on every request; a JWKS of 100,000 keys, parsed
on the event loop, stalled every client for seconds; a token whose ``exp`` lies centuries ahead is a
credential that can never be revoked by expiry. The JWKS is read with a byte cap, parsed in a worker thread,
and each fetch logs one line whatever it held. A JWKS URL must be ``https`` (keys fetched in clear text can
be swapped on the way) unless the operator allows ``http`` explicitly, as tests and a sidecar on loopback do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = [
    "UNKNOWN_KID_REFETCH_INTERVAL",
    "JwtError",
    "JwtIdentity",
    "JwtSettings",
    "JwtVerifier",
    "is_probably_jwt",
]

log = logging.getLogger(__name__)

UNKNOWN_KID_REFETCH_INTERVAL = 10.0
"""Seconds between two JWKS refetches caused by an unknown ``kid`` (see the module docstring)."""

_FAILED_FETCH_RETRY = 10.0
"""After a failed JWKS fetch with keys still cached, serve those keys this long before trying again."""

_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
_ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHM_BY_CURVE.values()) | {"EdDSA"}
_TRUE_STRINGS = frozenset({"true", "1", "yes"})
_JWKS_READ_CHUNK = 64 * 1024

# The clock used for cache ages and refetch rate limits; a module attribute so tests can move time on.
_clock = time.monotonic


class JwtError(Exception):
    """A token was refused. The message is safe to show the client: it never contains the token."""


@dataclass(frozen=True)
class JwtSettings:
    """How tokens are checked. Exactly one key source: ``jwks_url`` (asymmetric) or ``secret`` (HS*).

    ``algorithms`` left empty means the default for the key source: ("RS256", "ES256") for a JWKS,
    ("HS256",) for a secret. ``audience``/``issuer`` left None are not checked, so set both in production.
    """

    jwks_url: str | None = None
    secret: str | None = None
    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ()
    leeway: float = 30
    jwks_cache_seconds: float = 300
    required_claims: tuple[str, ...] = ("exp", "sub")
    admin_claim: str = "rerankd_admin"
    max_token_bytes: int = 8192
    max_lifetime_seconds: float = 24 * 3600
    max_jwks_bytes: int = 1024 * 1024
    max_jwks_keys: int = 100
    allow_insecure_jwks_url: bool = False

    def __post_init__(self) -> None:
        if bool(self.jwks_url) == bool(self.secret):
            raise ValueError("JWT auth needs exactly one key source: a JWKS URL or a shared secret, not both")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"the JWKS URL must be http(s), got {self.jwks_url!r}")
        if self.jwks_url and self.jwks_url.startswith("http://") and not self.allow_insecure_jwks_url:
            raise ValueError(f"the JWKS URL {self.jwks_url!r} is plain http: signing keys fetched without TLS can be "
                             "replaced on the way; use https, or allow it explicitly (--jwt-allow-http-jwks)")
        if min(self.max_token_bytes, self.max_jwks_bytes, self.max_jwks_keys) < 1 or self.max_lifetime_seconds <= 0:
            raise ValueError("max_token_bytes, max_jwks_bytes, max_jwks_keys and max_lifetime_seconds must be positive")
        algorithms = tuple(self.algorithms) or (("RS256", "ES256") if self.jwks_url else ("HS256",))
        allowed = _ASYMMETRIC_ALGORITHMS if self.jwks_url else _HMAC_ALGORITHMS
        refused = [alg for alg in algorithms if alg not in allowed]
        if refused:
            source = "a JWKS URL (asymmetric keys)" if self.jwks_url else "a shared secret (HMAC)"
            raise ValueError(f"algorithms {refused} cannot be used with {source}; choose from {sorted(allowed)}")
        if self.leeway < 0 or self.jwks_cache_seconds < 0:
            raise ValueError("leeway and jwks_cache_seconds must not be negative")
        if not self.admin_claim:
            raise ValueError("admin_claim must be a non-empty claim name")
        object.__setattr__(self, "algorithms", algorithms)
        object.__setattr__(self, "required_claims", tuple(self.required_claims))


@dataclass(frozen=True)
class JwtIdentity:
    """Who a verified token speaks for. ``key_id`` is what rate limits and the usage ledger key on."""

    subject: str
    key_id: str
    is_admin: bool
    claims: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class _JwksKey:
    """A public key from the JWKS and the algorithms it may verify (allow-list ∩ what its type can do)."""

    kid: str | None
    key: Any
    algorithms: frozenset[str]


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def is_probably_jwt(token: str) -> bool:
    """True when ``token`` looks like a JWS: three base64url segments whose header is JSON with ``alg``.

    Only a routing hint (JWT or ``rk-`` API key?); it verifies nothing.
    """
    if not isinstance(token, str) or token.startswith("rk-"):
        return False
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return False
    try:
        header = json.loads(_b64url_decode(parts[0]))
    except (ValueError, binascii.Error):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


def _algorithms_for_key(key: Any) -> frozenset[str]:
    """What a public key's type can verify. Anything else (HMAC bytes, private keys) verifies nothing."""
    if isinstance(key, RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, EllipticCurvePublicKey):
        alg = _EC_ALGORITHM_BY_CURVE.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    if isinstance(key, Ed25519PublicKey | Ed448PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


def _is_truthy(value: Any) -> bool:
    # Deliberately stricter than bool(): the string "false" must not grant admin.
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_STRINGS
    return value is True or (isinstance(value, int) and value == 1)


def _names_admin(value: Any) -> bool:
    """``roles``/``scope`` hold admin: a list containing "admin" or a space-separated string with it."""
    if isinstance(value, str):
        return "admin" in value.split()
    if isinstance(value, list | tuple):
        return "admin" in value
    return False


class JwtVerifier:
    """Verifies bearer JWTs per :class:`JwtSettings`; one per gateway, shared by all requests.

    JWKS keys are fetched with ``httpx.AsyncClient`` and cached for ``jwks_cache_seconds``; concurrent
    verifications that need a fetch share one (an ``asyncio.Lock``). When the JWKS endpoint is down,
    cached keys stay in use. Pass ``http_client`` to share a client; otherwise one is created and
    :meth:`aclose` closes it.
    """

    def __init__(self, settings: JwtSettings, *, http_client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._owns_client = http_client is None and settings.jwks_url is not None
        self._client = http_client
        if self._owns_client:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        self._lock = asyncio.Lock()
        self._keys: list[_JwksKey] = []
        self._expires_at: float | None = None  # when the cached JWKS goes stale; None: never fetched
        self._generation = 0  # bumped after every fetch attempt, so lock waiters can tell one just happened
        self._last_unknown_kid_refetch: float | None = None

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> JwtVerifier:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def verify(self, token: str) -> JwtIdentity:
        """The identity a valid token carries; :class:`JwtError` with a client-safe reason otherwise."""
        if not isinstance(token, str) or not token:
            raise JwtError("malformed token")
        if len(token) > self.settings.max_token_bytes:
            raise JwtError(f"token is longer than {self.settings.max_token_bytes} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JwtError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise JwtError("malformed token: no algorithm")
        if alg.lower() == "none":
            raise JwtError("unsigned tokens are not accepted")
        if alg not in self.settings.algorithms:
            raise JwtError("token algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise JwtError("malformed token: bad key id")

        key = self.settings.secret if self.settings.secret else await self._jwks_key(kid, alg)
        claims = self._decode(token, key, alg)
        self._check_lifetime(claims)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            # Usage and rate limits are kept per subject; an anonymous token would share one bucket.
            raise JwtError("token is missing the required 'sub' claim")
        return JwtIdentity(subject=subject, key_id=f"jwt:{subject}", is_admin=self._is_admin(claims),
                           claims=claims)

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        s = self.settings
        options: Options = {"require": list(s.required_claims), "verify_aud": s.audience is not None,
                            "verify_iss": s.issuer is not None}
        try:
            return jwt.decode(token, key, algorithms=[alg], audience=s.audience, issuer=s.issuer,
                              leeway=s.leeway, options=options)
        except jwt.ExpiredSignatureError:
            raise JwtError("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise JwtError("token is not yet valid") from None
        except jwt.InvalidAudienceError:
            raise JwtError("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise JwtError("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtError(f"token is missing the required {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise JwtError("token signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise JwtError("token algorithm is not accepted") from None
        except jwt.DecodeError:
            raise JwtError("malformed token") from None
        except jwt.PyJWTError as exc:
            # Exception class names and PyJWT messages describe the check, never the token itself.
            raise JwtError(f"invalid token ({type(exc).__name__})") from None

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """``exp`` must be a number no further ahead than ``max_lifetime_seconds`` (from now, and from ``iat``
        when the token has one). PyJWT accepts a numeric string and any size of number; neither may pass."""
        limit = self.settings.max_lifetime_seconds
        exp = claims.get("exp")
        if exp is None:
            return  # only when the operator removed "exp" from required_claims
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise JwtError("token 'exp' claim must be a number (seconds since the epoch)")
        if exp - time.time() > limit + self.settings.leeway:
            raise JwtError(f"token lifetime exceeds the gateway's limit of {limit:g} s ('exp' too far ahead)")
        iat = claims.get("iat")
        if isinstance(iat, int | float) and not isinstance(iat, bool) and exp - iat > limit + self.settings.leeway:
            raise JwtError(f"token lifetime exceeds the gateway's limit of {limit:g} s ('exp' - 'iat')")

    def _is_admin(self, claims: Mapping[str, Any]) -> bool:
        return (_is_truthy(claims.get(self.settings.admin_claim))
                or _names_admin(claims.get("roles")) or _names_admin(claims.get("scope")))

    # -- JWKS ---------------------------------------------------------------------------------------------

    def _find(self, kid: str | None, alg: str) -> _JwksKey | None:
        if kid is not None:
            return next((k for k in self._keys if k.kid == kid), None)
        # No kid in the token: only unambiguous when exactly one cached key can verify this algorithm.
        candidates = [k for k in self._keys if alg in k.algorithms]
        return candidates[0] if len(candidates) == 1 else None

    async def _jwks_key(self, kid: str | None, alg: str) -> Any:
        generation = self._generation
        if self._expires_at is None or _clock() >= self._expires_at:
            await self._refresh(generation)
        found = self._find(kid, alg)
        # Refetch for an unknown kid only if these keys are not brand new from this very call.
        if found is None and kid is not None and self._generation == generation:
            await self._refresh(generation, unknown_kid=True)
            found = self._find(kid, alg)
        if found is None:
            if not self._keys:
                raise JwtError("signing keys are unavailable; try again later")
            raise JwtError("token is signed by an unknown key")
        if alg not in found.algorithms:
            raise JwtError("token algorithm does not match its key")
        return found.key

    async def _refresh(self, seen_generation: int, *, unknown_kid: bool = False) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another verification fetched while we waited: use its result
            now = _clock()
            if unknown_kid:
                last = self._last_unknown_kid_refetch
                if last is not None and now - last < UNKNOWN_KID_REFETCH_INTERVAL:
                    return
                self._last_unknown_kid_refetch = now
            await self._fetch_locked()

    async def _fetch_locked(self) -> None:
        assert self._client is not None and self.settings.jwks_url is not None
        try:
            document = await self._read_jwks()
            # Parsing and key construction (RSA/EC math) off the event loop: requests keep flowing meanwhile.
            keys, skipped = await asyncio.to_thread(self._parse_jwks, document)
        except (httpx.HTTPError, ValueError) as exc:
            self._generation += 1  # bumped only once the attempt is over, so waiters see it as done
            if self._keys:
                # Keep serving the cached keys; retry soon rather than on every request.
                self._expires_at = _clock() + min(self.settings.jwks_cache_seconds, _FAILED_FETCH_RETRY)
                log.warning("JWKS fetch from %s failed (%s); still using %d cached keys",
                            self.settings.jwks_url, exc, len(self._keys))
            else:
                log.warning("JWKS fetch from %s failed (%s); no keys cached", self.settings.jwks_url, exc)
            return
        self._keys = keys
        self._expires_at = _clock() + self.settings.jwks_cache_seconds
        self._generation += 1
        level = logging.WARNING if skipped else logging.DEBUG
        log.log(level, "JWKS from %s: %d usable keys, %d skipped", self.settings.jwks_url, len(keys), skipped)

    async def _read_jwks(self) -> bytes:
        """The JWKS document's bytes, refused past ``max_jwks_bytes`` without reading the rest."""
        assert self._client is not None and self.settings.jwks_url is not None
        cap = self.settings.max_jwks_bytes
        async with self._client.stream("GET", self.settings.jwks_url, headers={"Accept": "application/json"}) as resp:
            resp.raise_for_status()
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise ValueError(f"the JWKS document is {declared} bytes, over the {cap}-byte limit")
            body = bytearray()
            async for chunk in resp.aiter_bytes(_JWKS_READ_CHUNK):
                body += chunk
                if len(body) > cap:
                    raise ValueError(f"the JWKS document is over the {cap}-byte limit")
        return bytes(body)

    def _parse_jwks(self, document: bytes) -> tuple[list[_JwksKey], int]:
        """Usable signing keys and how many entries were skipped; runs in a worker thread."""
        data = json.loads(document)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("the JWKS document has no 'keys' list")
        if len(data["keys"]) > self.settings.max_jwks_keys:
            raise ValueError(f"the JWKS document has {len(data['keys'])} keys, over the limit of "
                             f"{self.settings.max_jwks_keys}")
        allowed = frozenset(self.settings.algorithms)
        keys: list[_JwksKey] = []
        skipped = 0
        for entry in data["keys"]:
            if not isinstance(entry, dict) or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
                skipped += 1
                continue  # symmetric keys never come from a JWKS here; encryption keys do not sign
            try:
                jwk = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                skipped += 1
                continue
            algorithms = _algorithms_for_key(jwk.key) & allowed
            declared = entry.get("alg")
            if isinstance(declared, str):
                algorithms &= {declared}
            if algorithms:
                kid = entry.get("kid")
                keys.append(_JwksKey(kid=kid if isinstance(kid, str) else None, key=jwk.key, algorithms=algorithms))
            else:
                skipped += 1
        if not keys:
            raise ValueError("the JWKS document has no usable signing keys")
        return keys, skipped
