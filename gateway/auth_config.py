"""The gateway's config file (`shoal serve --config FILE` or `SHOAL_CONFIG`), in Bacalhau's shape:

    Auth:
      Users:
        - Alias: ci-admin                # optional display name
          Username: admin                # with Password (plain, or a bcrypt hash from `shoal auth hash-password`)
          Password: "$2b$12$..."
          Capabilities: [{Actions: ["*"]}]
        - APIKey: 6a0c…                  # or an API key (20 to 255 characters), sent as `Authorization: Bearer`
          Capabilities: [{Actions: ["read:job", "write:job"]}]
          Namespaces: [team-a]           # none: every namespace
      OIDC: {Issuer: …, Audience: …, JWKSUri: …}   # optional: JWTs from an identity provider
    Compute:
      JoinToken: …                       # a shared secret agents may register with (shoal agent --token)

Keys are matched case-insensitively. Read once at start; a mistake stops the gateway with the reason.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from gateway.errors import ConfigurationError

CAPABILITIES = ("read:job", "write:job", "read:node", "write:node", "read:agent", "write:agent", "read:*", "write:*",
                "*")
_BCRYPT = re.compile(r"^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$")
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class User:
    alias: str
    username: str
    password: str  # plain or a bcrypt hash
    api_key: str
    capabilities: tuple[str, ...]
    namespaces: tuple[str, ...] | None  # None: every namespace

    @property
    def name(self) -> str:
        return self.alias or self.username or f"api-key {self.api_key[:4]}…"

    def password_matches(self, given: str) -> bool:
        if _BCRYPT.match(self.password):
            try:
                return bcrypt.checkpw(given.encode(), self.password.encode())
            except ValueError:
                return False
        return hmac.compare_digest(given.encode(), self.password.encode())


@dataclass(frozen=True)
class AuthConfig:
    users: tuple[User, ...] = ()
    oidc: Mapping[str, Any] | None = None
    join_token: str = ""

    @property
    def has_credentials(self) -> bool:
        """Whether anyone must authenticate: users or an identity provider are configured."""
        return bool(self.users) or self.oidc is not None

    def redacted(self) -> dict[str, Any]:
        """The configuration as `/api/v1/agent/config` shows it: no password, key or token."""
        return {
            "Auth": {
                "Users": [{"Alias": u.alias, "Username": u.username,
                           "Password": "<redacted>" if u.password else "", "APIKey": "<redacted>" if u.api_key else "",
                           "Capabilities": [{"Actions": list(u.capabilities)}],
                           "Namespaces": list(u.namespaces) if u.namespaces is not None else []}
                          for u in self.users],
                "OIDC": dict(self.oidc) if self.oidc is not None else None,
            },
            "Compute": {"JoinToken": "<redacted>" if self.join_token else ""},
        }


def hash_password(password: str) -> str:
    """A bcrypt hash (cost 12, as Bacalhau's `auth hash-password`) to put in the config file."""
    check_password(password, "Password")
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(12)).decode()


def check_password(password: str, field: str) -> None:
    if not _BCRYPT.match(password) and not 10 <= len(password) <= 72:
        raise ConfigurationError(f"{field}: a password must be 10 to 72 characters (bcrypt's limit), or a bcrypt hash")


def load_auth_config(path: Path | None, *, join_token: str = "") -> AuthConfig:
    """The auth part of the config file (none: no users); `join_token` (SHOAL_JOIN_TOKEN) wins over the file's."""
    if path is None:
        return AuthConfig(join_token=join_token)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read the config file {path}: {exc}") from None
    root = _mapping(document, str(path))
    auth = _mapping(_get(root, "Auth") or {}, "Auth")
    compute = _mapping(_get(root, "Compute") or {}, "Compute")
    users = tuple(_user(raw, f"Auth.Users[{i}]") for i, raw in enumerate(_list(_get(auth, "Users"), "Auth.Users")))
    for attribute, label in (("username", "Username"), ("api_key", "APIKey"), ("alias", "Alias")):
        values = [getattr(u, attribute).lower() if attribute == "username" else getattr(u, attribute) for u in users]
        present = [v for v in values if v]
        if len(present) != len(set(present)):
            raise ConfigurationError(f"Auth.Users: two users have the same {label}")
    oidc = _get(auth, "OIDC")
    return AuthConfig(users=users, oidc=_mapping(oidc, "Auth.OIDC") if oidc else None,
                      join_token=join_token or str(_get(compute, "JoinToken") or ""))


def _user(raw: Any, field: str) -> User:
    data = _mapping(raw, field)
    username, password = str(_get(data, "Username") or ""), str(_get(data, "Password") or "")
    api_key = str(_get(data, "APIKey") or "")
    if bool(username) == bool(api_key):
        raise ConfigurationError(f"{field}: give either Username and Password, or APIKey")
    if username:
        if not _USERNAME.match(username):
            raise ConfigurationError(f"{field}.Username: letters, digits and _.@- only, at most 100")
        check_password(password, f"{field}.Password")
    elif not 20 <= len(api_key) <= 255:
        raise ConfigurationError(f"{field}.APIKey: must be 20 to 255 characters")
    actions: list[str] = []
    for index, capability in enumerate(_list(_get(data, "Capabilities"), f"{field}.Capabilities")):
        actions += [str(a) for a in _list(_get(_mapping(capability, f"{field}.Capabilities[{index}]"), "Actions"),
                                          f"{field}.Capabilities[{index}].Actions")]
    if not actions:
        raise ConfigurationError(f"{field}.Capabilities: give at least one capability")
    for action in actions:
        if action not in CAPABILITIES:
            raise ConfigurationError(f"{field}.Capabilities: {action!r} is not one of {', '.join(CAPABILITIES)}")
    namespaces = [str(n) for n in _list(_get(data, "Namespaces"), f"{field}.Namespaces")]
    for namespace in namespaces:
        if not _NAMESPACE.match(namespace):
            raise ConfigurationError(f"{field}.Namespaces: {namespace!r} is not a namespace name")
    return User(alias=str(_get(data, "Alias") or ""), username=username, password=password, api_key=api_key,
                capabilities=tuple(dict.fromkeys(actions)), namespaces=tuple(namespaces) or None)


def _get(data: Mapping[str, Any], key: str) -> Any:
    return next((value for name, value in data.items() if str(name).lower() == key.lower()), None)


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigurationError(f"{field}: must be a mapping")
    return value


def _list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigurationError(f"{field}: must be a list")
    return value
