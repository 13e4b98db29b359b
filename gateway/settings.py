"""Gateway settings, read once from the environment at start and passed down."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigurationError

MAX_PRESIGN_SECONDS = 7 * 24 * 3600
DATABASE_CALLS = ("auto", "loop", "threads")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the gateway reads from its environment; `from_env` is the only reader."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 1234
    public_url: str = ""
    config: str = ""  # the config file (users, API keys, OIDC, join token): `serve --config` or SHOAL_CONFIG
    database_url: str = ""
    database_calls: str = "auto"  # where the gateway runs its transactions: auto, loop or threads (Services.db)
    results_bucket: str = ""
    results_prefix: str = "results"
    s3_endpoint_url: str = ""
    s3_region: str = ""
    upload_expiry: int = 15 * 60
    download_expiry: int = 3600
    lease_seconds: float = 60.0
    poll_seconds: float = 20.0
    housekeeping_seconds: float = 5.0
    disconnect_seconds: float = 60.0
    max_attempts: int = 3
    join_token: str = ""
    manual_approval: bool = False
    queue_timeout: int = 0
    default_cpu: str = "500m"
    default_memory: str = "512Mb"
    max_body_bytes: int = 10 << 20
    max_result_bytes: int = 10 << 30
    max_upload_bytes: int = 10 << 30
    max_log_bytes: int = 16 << 20
    auth_failures_per_minute: int = 10

    def __post_init__(self) -> None:
        for name in ("upload_expiry", "download_expiry"):
            value = getattr(self, name)
            if not 0 < value <= MAX_PRESIGN_SECONDS:
                raise ConfigurationError(f"{name} must be between 1 s and 7 days, not {value}")
        if self.database_calls not in DATABASE_CALLS:
            raise ConfigurationError(f"database_calls must be one of {', '.join(DATABASE_CALLS)}, not "
                                     f"{self.database_calls!r}")
        if self.poll_seconds <= 0 or self.lease_seconds < 3 * self.poll_seconds:
            raise ConfigurationError("the lease must be at least three long-poll periods")

    @property
    def idle_heartbeat_seconds(self) -> float:
        """How old a node's heartbeat may grow before an idle poll writes it: a quarter of the time from one
        long-poll to the disconnection is left as the margin (with the defaults, 30 s: one idle poll in two
        writes, and a heartbeat is never more than 50 s old)."""
        return max(0.0, (self.disconnect_seconds - self.poll_seconds) * 3 / 4)

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'shoal.db'}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from `SHOAL_*` variables; keyword overrides (command-line flags) win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field, kind in _ENV_FIELDS.items():
            raw = env.get(f"SHOAL_{field.upper()}")
            if raw is not None and raw != "":
                try:
                    values[field] = kind(raw)
                except ValueError as exc:
                    raise ConfigurationError(f"SHOAL_{field.upper()}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        values.setdefault("data_dir", Path(env.get("SHOAL_DATA_DIR", "~/.shoal")).expanduser())
        values["data_dir"] = Path(str(values["data_dir"])).expanduser()
        return cls(**values)  # type: ignore[arg-type]


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError(f"{text!r} is not true or false")
    return value in ("1", "true", "yes", "on")


_ENV_FIELDS: dict[str, Callable[[str], object]] = {
    "host": str,
    "port": int,
    "public_url": str,
    "config": str,
    "database_url": str,
    "database_calls": str,
    "results_bucket": str,
    "results_prefix": str,
    "s3_endpoint_url": str,
    "s3_region": str,
    "upload_expiry": int,
    "download_expiry": int,
    "lease_seconds": float,
    "poll_seconds": float,
    "housekeeping_seconds": float,
    "disconnect_seconds": float,
    "max_attempts": int,
    "join_token": str,
    "manual_approval": _flag,
    "queue_timeout": int,
    "default_cpu": str,
    "default_memory": str,
    "max_body_bytes": int,
    "max_result_bytes": int,
    "max_upload_bytes": int,
    "max_log_bytes": int,
    "auth_failures_per_minute": int,
}
