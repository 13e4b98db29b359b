"""Who is calling, and may they? Credentials, Bacalhau's capabilities, namespaces, and failed-login limits.

Every request except the open ones (liveness, version, the API description, presigned object URLs and the
agent protocol, which has its own node credentials) is authenticated by `AuthMiddleware`:

- `Authorization: Basic …`: a configured user's name and password (plain or bcrypt);
- `Authorization: Bearer …`: a JWT from the configured OIDC issuer, a CI token (`shoal_ci_…`), or an API key.

The capability a route needs is `read:<resource>` for GET and `write:<resource>` otherwise, the resource
found from the path as Bacalhau does (`jobs` and uploads → job, `nodes` → node, `agent` → agent); `*`,
`read:*` and `write:*` grant what they say. Without credentials configured the gateway is open (it then
listens only on loopback): a request without credentials acts with every capability, one with credentials
acts as they allow. Objects of a namespace the caller may not see are answered 404, as if absent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth_config import AuthConfig, User
from gateway.errors import Forbidden, GatewayError, NotFound, TooManyRequests, Unauthorized, error_body
from gateway.oidc import OIDCConfig, OIDCVerifier, looks_like_jwt
from gateway.responses import JSONResponse
from gateway.tokens import TokenStore

ADMIN = "*"
AUTHENTICATED = ""  # any valid credentials; the handler decides the rest
_OPEN_PATHS = {"/", "/livez", "/version", "/api/v1/agent/alive", "/api/v1/agent/version", "/api/v1/openapi.json"}
_OPEN_PREFIXES = ("/api/v1/objects/", "/api/v1/compute/")  # signed URLs; node credentials and join tokens
_RESOURCES = (("/api/v1/orchestrator/jobs", "job"), ("/api/v1/uploads", "job"),
              ("/api/v1/orchestrator/nodes", "node"), ("/api/v1/agent", "agent"))


@dataclass(frozen=True)
class Principal:
    """The caller: a name for the audit log, capabilities, and the namespaces it may see (None: all)."""

    name: str
    kind: str  # open | user | api-key | token | jwt
    capabilities: tuple[str, ...]
    namespaces: tuple[str, ...] | None = None

    def can(self, needed: str) -> bool:
        return grants(self.capabilities, needed)

    def sees(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    @property
    def default_namespace(self) -> str:
        """`default`, or the first namespace of a caller that may not see it."""
        return self.namespaces[0] if self.namespaces and "default" not in self.namespaces else "default"


OPEN = Principal("anonymous", "open", (ADMIN,))


def grants(held: Iterable[str], needed: str) -> bool:
    for capability in held:
        if capability in (ADMIN, needed):
            return True
        if capability == "read:*" and needed.startswith("read:"):
            return True
        if capability == "write:*" and needed.startswith("write:"):
            return True
    return False


def required_capability(method: str, path: str) -> str | None:
    """What a request needs: a capability, AUTHENTICATED, or None for an open route."""
    if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
        return None
    if path.startswith("/api/v1/auth/"):
        return AUTHENTICATED
    if path.startswith("/api/v1/audit"):
        return ADMIN
    verb = "read" if method in ("GET", "HEAD") else "write"
    for prefix, resource in _RESOURCES:
        if path == prefix or path.startswith(prefix + "/"):
            return f"{verb}:{resource}"
    return "write:node"  # as Bacalhau: a path it does not map needs write:node


def principal(connection: HTTPConnection) -> Principal:
    """The caller of a request that passed `AuthMiddleware`."""
    found: Principal = getattr(connection.state, "principal", OPEN)
    return found


def visible_namespace(connection: HTTPConnection, namespace: str | None = None) -> str:
    """The namespace a request names (`namespace=`, else the caller's default), if the caller may see it."""
    caller = principal(connection)
    wanted = namespace or connection.query_params.get("namespace") or caller.default_namespace
    if not caller.sees(wanted):
        raise NotFound(f"namespace not found: {wanted}")
    return wanted


class FailureLimiter:
    """At most `limit` failed authentications per client address in `window` seconds; then 429 until the
    oldest failure leaves the window."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        with self._lock:
            recent = self._recent(client, time.monotonic())
            if len(recent) >= self.limit:
                wait = int(recent[0] + self.window - time.monotonic()) + 1
                raise TooManyRequests(f"too many failed authentications from {client}; try again in {wait}s")

    def fail(self, client: str) -> None:
        with self._lock:
            self._recent(client, time.monotonic()).append(time.monotonic())
            if len(self._failures) > 10_000:  # forget idle clients
                for key in [k for k, v in self._failures.items() if not v][:5_000]:
                    del self._failures[key]

    def _recent(self, client: str, now: float) -> deque[float]:
        recent = self._failures.setdefault(client, deque())
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        return recent


class Authenticator:
    """Turns an Authorization header into a Principal, or refuses it."""

    def __init__(self, config: AuthConfig, tokens: TokenStore, *, limiter: FailureLimiter | None = None) -> None:
        self.config = config
        self.tokens = tokens
        self.open = not config.has_credentials
        self.limiter = limiter or FailureLimiter()
        self._by_username = {u.username.lower(): u for u in config.users if u.username}
        self._by_key = {_digest(u.api_key): u for u in config.users if u.api_key}
        self._oidc = OIDCVerifier(OIDCConfig.from_mapping(config.oidc)) if config.oidc is not None else None
        self._basic_cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()  # bcrypt is slow on purpose
        self._lock = threading.Lock()

    def principal_for(self, authorization: str, client: str) -> Principal:
        if not authorization:
            if self.open:
                return OPEN
            raise Unauthorized("Missing Authorization header: send Basic credentials or a Bearer token",
                               hint="set SHOAL_API_KEY, or SHOAL_API_USERNAME and SHOAL_API_PASSWORD")
        self.limiter.check(client)
        try:
            return self._verify(authorization)
        except Unauthorized:
            self.limiter.fail(client)
            raise

    def _verify(self, authorization: str) -> Principal:
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            return self._basic(value)
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized("unsupported authentication method: use Basic or Bearer")
        if looks_like_jwt(value):
            if self._oidc is None:
                raise Unauthorized("this gateway accepts no JWTs: no identity provider is configured")
            identity = self._oidc.verify(value)
            return Principal(f"jwt:{identity.subject}", "jwt", identity.capabilities, identity.namespaces)
        token = self.tokens.authenticate(value)
        if token is not None:
            return Principal(f"token:{token.name} ({token.id})", "token", tuple(token.capabilities), (token.namespace,))
        user = self._by_key.get(_digest(value))
        if user is None:
            raise Unauthorized("invalid, expired or revoked token")
        return _principal(user, "api-key")

    def _basic(self, value: str) -> Principal:
        try:
            username, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Basic credentials") from None
        key = _digest(f"{username.lower()}\0{password}")
        now = time.monotonic()
        with self._lock:
            cached = self._basic_cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        user = self._by_username.get(username.lower())
        if not sep or user is None or not user.password_matches(password):
            raise Unauthorized("invalid username or password")
        found = _principal(user, "user")
        with self._lock:
            self._basic_cache[key] = (now + 300, found)
            while len(self._basic_cache) > 1000:
                self._basic_cache.popitem(last=False)
        return found


def _principal(user: User, kind: str) -> Principal:
    return Principal(user.name, kind, user.capabilities, user.namespaces)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthMiddleware:
    """Authenticates each request and checks the capability its route needs; the Principal is left in
    `request.state.principal` for handlers (namespaces, the audit log)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        needed = required_capability(scope.get("method", "GET"), scope["path"])
        if needed is not None:
            connection = HTTPConnection(scope)
            auth: Authenticator = scope["app"].state.services.auth
            client = connection.client.host if connection.client else "?"
            header = connection.headers.get("authorization", "")
            try:  # open mode without credentials needs no thread: the common devstack case stays cheap
                caller = OPEN if auth.open and not header else await run_in_threadpool(auth.principal_for, header,
                                                                                        client)
                if needed and not caller.can(needed):
                    raise Forbidden(f"user '{caller.name}' does not have the required capability '{needed}'")
            except GatewayError as exc:
                await _refuse(scope, receive, send, exc)
                return
            scope.setdefault("state", {})["principal"] = caller
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: GatewayError) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
        return
    request_id = scope.get("state", {}).get("request_id", "")
    headers = {"WWW-Authenticate": 'Basic realm="shoal", Bearer'} if exc.status == 401 else None
    response = JSONResponse(error_body(exc.status, exc.message, exc.code, request_id, exc.hint),
                            status_code=exc.status, headers=headers)
    await response(scope, receive, send)


def check_join_token(auth: Authenticator, given: str) -> bool:
    """Whether a registering node may join: the configured shared JoinToken or a live join token; in open
    mode without a configured JoinToken, any node may."""
    expected = auth.config.join_token
    if expected and given and hmac.compare_digest(given.encode(), expected.encode()):
        return True
    if given and auth.tokens.use_join_token(given):
        return True
    return auth.open and not expected
