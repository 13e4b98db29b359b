"""JWTs from an OIDC identity provider, checked against the provider's published keys (its JWKS).

A caller sends `Authorization: Bearer <token>`. When the token looks like a JWT (`looks_like_jwt`), the gateway
hands it to `OIDCVerifier.verify`, which returns a `JWTIdentity` or raises `Unauthorized`; any other bearer token
is an API key or CI token, as in Bacalhau.

The JWKS is fetched on first use and kept for `cache_seconds`. A token signed with a key we have not seen (the
provider rotated its keys) triggers one early refetch, at most every `REFETCH_SECONDS`, so a stream of forged
`kid`s cannot turn the gateway into a load generator against the provider. If a refetch fails, the keys we
already hold stay in use; with no keys at all, every JWT is refused until the provider answers again.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from gateway.errors import ConfigurationError, Unauthorized

log = logging.getLogger("shoal.gateway.oidc")

#: Signature algorithms whose verification key is public. HMAC (HS*) is refused because the JWKS is public, so
#: anyone could sign with it; `none` is refused because it is no signature at all.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

#: The shortest interval between two JWKS fetches caused by unknown `kid`s, or after a failed fetch.
REFETCH_SECONDS = 10.0
FETCH_TIMEOUT = 5.0

_SECTION = "Auth.OIDC"
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class OIDCConfig:
    """Which provider's tokens the gateway accepts, and how their claims map to Bacalhau's."""

    issuer: str
    audience: str
    jwks_uri: str
    algorithms: tuple[str, ...] = ("RS256",)
    capabilities_claim: str = "permissions"
    namespaces_claim: str = "namespaces"
    leeway: float = 30.0
    cache_seconds: float = 300.0

    def __post_init__(self) -> None:
        for name, key in _TEXT_KEYS.items():
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigurationError(f"{_SECTION}.{key} must be a non-empty string")
        url = httpx.URL(self.jwks_uri)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(f"{_SECTION}.JWKSUri must be an http(s) URL, not {self.jwks_uri!r}")
        if not self.algorithms:
            raise ConfigurationError(f"{_SECTION}.Algorithms must name at least one algorithm")
        for alg in self.algorithms:
            if alg not in ASYMMETRIC_ALGORITHMS:
                raise ConfigurationError(
                    f"{_SECTION}.Algorithms: {alg!r} is not an asymmetric JWS algorithm "
                    f"({', '.join(ASYMMETRIC_ALGORITHMS)}); HMAC and 'none' are refused because the JWKS is public")
        for name, key in (("leeway", "Leeway"), ("cache_seconds", "CacheSeconds")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ConfigurationError(f"{_SECTION}.{key} must be a number of seconds >= 0, not {value!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> OIDCConfig:
        """Build from the config file's `Auth: {OIDC: {...}}`; `data` may be the whole file, `Auth` or `OIDC`.

        Keys are case-insensitive. An unknown key is an error, so a misspelt optional key is not silently ignored.
        """
        section = _descend(_descend(data, "auth"), "oidc")
        by_key = {key.lower(): name for name, key in _ALL_KEYS.items()}
        values: dict[str, Any] = {}
        for key, value in section.items():
            name = by_key.get(str(key).lower())
            if name is None:
                raise ConfigurationError(f"{_SECTION}.{key} is not a known setting ({', '.join(_ALL_KEYS.values())})")
            values[name] = value
        for name in ("issuer", "audience", "jwks_uri"):
            if name not in values:
                raise ConfigurationError(f"{_SECTION}.{_ALL_KEYS[name]} is required")
        if "algorithms" in values:
            values["algorithms"] = _algorithms(values["algorithms"])
        return cls(**values)


_TEXT_KEYS = {"issuer": "Issuer", "audience": "Audience", "jwks_uri": "JWKSUri",
              "capabilities_claim": "CapabilitiesClaim", "namespaces_claim": "NamespacesClaim"}
_ALL_KEYS = {**_TEXT_KEYS, "algorithms": "Algorithms", "leeway": "Leeway", "cache_seconds": "CacheSeconds"}


def _descend(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    for name, value in data.items():
        if str(name).lower() == key:
            if not isinstance(value, Mapping):
                raise ConfigurationError(f"{_SECTION} must be a mapping of settings")
            return value
    return data


def _algorithms(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple) or not all(isinstance(alg, str) for alg in value):
        raise ConfigurationError(f"{_SECTION}.Algorithms must be a list of algorithm names, such as [RS256]")
    return tuple(value)


@dataclass(frozen=True)
class JWTIdentity:
    """Who a verified token speaks for, and what it allows."""

    subject: str
    capabilities: tuple[str, ...]
    namespaces: tuple[str, ...] | None  # None: every namespace
    expires_at: float


def looks_like_jwt(token: str) -> bool:
    """True for three base64url segments whose first is a JSON object (a JWS header); anything else is an API key.

    The signature segment may be empty, so an unsigned (`alg: none`) token is still routed to `verify` and refused
    there with a clear message, rather than being tried as an API key.
    """
    if not _JWT_SHAPE.fullmatch(token):
        return False
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except ValueError:
        return False
    return isinstance(header, dict)


class OIDCVerifier:
    """Verifies JWTs for one `OIDCConfig`; thread-safe, shared by every request."""

    def __init__(self, config: OIDCConfig, http: httpx.Client | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`http` fetches the JWKS (one is made, and closed by `close`, if not given); `clock` times the cache."""
        self.config = config
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=FETCH_TIMEOUT)
        self._clock = clock
        self._lock = threading.Lock()
        self._jwks: dict[str | None, dict[str, Any]] | None = None  # JWK by kid, usable signing keys only
        self._keys: dict[tuple[str | None, str], jwt.PyJWK] = {}  # built lazily per (kid, alg)
        self._fetched_at = -math.inf
        self._refetched_at = -math.inf  # last early refetch for an unknown kid
        self._failed_at = -math.inf
        self._error = ""

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def verify(self, token: str) -> JWTIdentity:
        """The identity a valid token carries; `Unauthorized` naming the problem for any other token."""
        header = _header(token)
        alg = header.get("alg")
        if alg not in self.config.algorithms:
            raise Unauthorized(f"the token is signed with {alg!r}; this gateway accepts only "
                               f"{', '.join(self.config.algorithms)} tokens from {self.config.issuer}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("the token's `kid` header is not a string")
        claims = self._decode(token, self._key(kid, alg), kid)
        return JWTIdentity(
            subject=claims["sub"],
            capabilities=_strings(claims, self.config.capabilities_claim, required=True) or (),
            namespaces=_strings(claims, self.config.namespaces_claim, required=False),
            expires_at=float(claims["exp"]),
        )

    def _decode(self, token: str, key: jwt.PyJWK, kid: str | None) -> dict[str, Any]:
        config = self.config
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=list(config.algorithms), audience=config.audience, issuer=config.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]}, leeway=config.leeway)
        except jwt.PyJWTError as exc:
            raise Unauthorized(self._reason(exc, kid)) from None
        if claims["iss"] != config.issuer:  # PyJWT checks this too; an exact match is the whole point
            raise Unauthorized(f"the token's issuer (iss) is not {config.issuer}")
        return claims

    def _reason(self, exc: jwt.PyJWTError, kid: str | None) -> str:
        if isinstance(exc, jwt.ExpiredSignatureError):
            return "the token has expired (exp); sign in again for a fresh one"
        if isinstance(exc, jwt.ImmatureSignatureError):
            return f"the token is not valid yet: {exc}"
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"the token has no `{exc.claim}` claim"
        if isinstance(exc, jwt.InvalidIssuerError):
            return f"the token's issuer (iss) is not {self.config.issuer}"
        if isinstance(exc, jwt.InvalidAudienceError):
            return f"the token's audience (aud) does not include {self.config.audience}"
        if isinstance(exc, jwt.InvalidSignatureError):
            return f"the token's signature does not verify with the identity provider's key {kid!r}"
        if isinstance(exc, jwt.InvalidAlgorithmError | jwt.InvalidKeyError):
            return f"the token's algorithm does not fit the identity provider's key {kid!r}: {exc}"
        return f"the token is not valid: {exc}"

    def _key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        with self._lock:
            jwks = self._current_jwks(kid)
            if kid is None and len(jwks) == 1:
                kid = next(iter(jwks))
            if kid not in jwks:
                raise Unauthorized(self._unknown_kid(kid, jwks))
            if (kid, alg) not in self._keys:
                self._keys[kid, alg] = _build_key(jwks[kid], kid, alg)
            return self._keys[kid, alg]

    def _unknown_kid(self, kid: str | None, jwks: Mapping[str | None, Any]) -> str:
        if kid is None:
            return f"the token has no `kid` header and the identity provider publishes {len(jwks)} keys"
        reason = f"the token's signing key {kid!r} is not in the identity provider's JWKS"
        return f"{reason} (and refreshing it failed: {self._error})" if self._failed_at > self._fetched_at else reason

    def _current_jwks(self, kid: str | None) -> dict[str | None, dict[str, Any]]:
        now = self._clock()
        expired = self._jwks is None or now - self._fetched_at >= self.config.cache_seconds
        unknown = (self._jwks is not None and kid is not None and kid not in self._jwks
                   and now - self._refetched_at >= REFETCH_SECONDS)
        backing_off = now - self._failed_at < REFETCH_SECONDS
        if (expired or unknown) and not backing_off:
            if unknown and not expired:
                self._refetched_at = now
            self._refresh(now)
        if self._jwks is None:
            raise Unauthorized(self._error)
        return self._jwks

    def _refresh(self, now: float) -> None:
        try:
            jwks = self._fetch()
        except Unauthorized as exc:
            self._failed_at, self._error = now, exc.message
            if self._jwks is not None:
                log.warning("%s; keeping the keys fetched earlier", exc.message)
            return
        self._jwks, self._keys, self._fetched_at = jwks, {}, now

    def _fetch(self) -> dict[str | None, dict[str, Any]]:
        uri = self.config.jwks_uri
        try:
            response = self._http.get(uri, timeout=FETCH_TIMEOUT)
            response.raise_for_status()
            document = response.json()
        except httpx.HTTPError as exc:
            raise Unauthorized(f"cannot reach the identity provider's JWKS at {uri}: {exc}") from None
        except ValueError:
            raise Unauthorized(f"the identity provider's JWKS at {uri} is not JSON") from None
        try:
            jwks = jwt.PyJWKSet.from_dict(document)  # skips keys it cannot use
        except (jwt.PyJWTError, AttributeError) as exc:
            raise Unauthorized(f"the identity provider's JWKS at {uri} has no usable keys: {exc}") from None
        usable = {key.key_id for key in jwks}
        return {jwk.get("kid"): jwk for jwk in document["keys"]
                if isinstance(jwk, dict) and jwk.get("use", "sig") == "sig" and jwk.get("kid") in usable}


def _header(token: str) -> dict[str, Any]:
    if not looks_like_jwt(token):
        raise Unauthorized("the bearer token is not a well-formed JWT")
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"the bearer token is not a well-formed JWT: {exc}") from None


def _build_key(jwk: dict[str, Any], kid: str | None, alg: str) -> jwt.PyJWK:
    """The JWK as a key for `alg`; a JWK that names its own `alg` is used for that algorithm only."""
    declared = jwk.get("alg")
    if declared is not None and declared != alg:
        raise Unauthorized(f"the token is signed with {alg!r} but the identity provider's key {kid!r} is for "
                           f"{declared!r}")
    try:
        return jwt.PyJWK(jwk, algorithm=alg)
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"the identity provider's key {kid!r} ({jwk.get('kty')}) cannot verify {alg!r} "
                           f"tokens: {exc}") from None


def _strings(claims: Mapping[str, Any], claim: str, *, required: bool) -> tuple[str, ...] | None:
    """A claim holding a list of strings, or one space-separated string (like OAuth's `scope`)."""
    if claim not in claims:
        if required:
            raise Unauthorized(f"the token has no `{claim}` claim, so it grants no capabilities")
        return None
    value = claims[claim]
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise Unauthorized(f"the token's `{claim}` claim must be a list of strings or a space-separated string")
