"""Settings: one frozen object built once by the CLI and passed down.

Sources, highest first: keyword arguments, `S2SQ_*` environment variables, a
`.env` file, the TOML file given with `--config` (keys are the setting names
in lower case without the prefix), then the defaults of SPEC section 8.
Unknown keys in the TOML file are errors, so a typo never goes unnoticed.
"""

from __future__ import annotations

import math
import os
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.broker.brokers import split_urls, url_problem
from daemon.broker.topology import Topology


class Settings(BaseSettings):
    """Everything the daemon, the CLI and the HTTP API can be told."""

    model_config = SettingsConfigDict(
        env_prefix="S2SQ_",
        env_file=".env",
        # A shared .env may hold other programs' variables: ignore what is not ours.
        # Keys of the --config file are checked by load_settings instead.
        extra="ignore",
        frozen=True,
    )

    # One URL, or several (nodes of one cluster) separated by commas: the daemon
    # uses one and moves to the next when it loses it (daemon/broker/brokers.py).
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    prefix: str = Field("s2s", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    queue_type: Literal["quorum", "classic"] = "quorum"
    clients_file: Path | None = None

    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    admin_token: SecretStr | None = None

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "s2s-queue@localhost"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    admin_emails: str | None = None
    smtp_timeout: float = Field(15.0, gt=0)
    # Public address of the web console, for the links in notification emails.
    # Unset: http://<http_host>:<http_port> (fine for a single local daemon).
    # https:// also marks the console's cookies Secure: behind a TLS proxy the
    # daemon itself only ever sees plain HTTP.
    console_url: str | None = None
    # Notifications (daemon/core/outbox.py). A retry that fails again within the quiet
    # period sends no second mail; non-blocking failures of one client within the
    # digest window after a mail are gathered into one digest at the window's end.
    notify_quiet_period: float = Field(3600.0, ge=0)
    notify_digest_window: float = Field(300.0, gt=0)
    # Delivery retries (seconds); after the last delay, retries repeat it until
    # the notification is `notify_max_age` seconds old, then it is given up (logged).
    notify_retry_delays: str = "10,60,300,900"
    notify_max_age: float = Field(172_800.0, gt=0)
    notify_concurrency: int = Field(8, ge=1)
    webhook_timeout: float = Field(10.0, gt=0)

    blocking_attempts: int = Field(3, ge=1)
    # In-place back-off between blocking attempts: base * 2**(n-1), capped.
    blocking_backoff: float = Field(1.0, ge=0)
    blocking_backoff_max: float = Field(60.0, ge=0)
    nonblocking_retry_delays: str = "10,60,300"
    nonblocking_concurrency: int = Field(32, ge=1)
    # Processes running the non-blocking pool (each with its own prefetch of
    # `nonblocking_concurrency`): the supervisor's own and `processes - 1` worker
    # processes it starts and watches (daemon/workers.py). "auto": one per core.
    processes: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    handler_timeout: float = Field(60.0, gt=0)
    shutdown_timeout: float = Field(30.0, ge=0)
    # Seconds between two walks of every client queue's depth (daemon/broker/depths.py), at
    # least four times as long as the last walk took; listings and /metrics read the
    # last walk's answers.
    depth_refresh: float = Field(5.0, gt=0)

    max_body_bytes: int = Field(1_048_576, ge=1)
    image_max_bytes: int = Field(10_485_760, ge=1)
    image_dir: Path = Path("./images")

    log_format: Literal["json", "console"] = Field(
        default_factory=lambda: "console" if sys.stdout.isatty() else "json"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Consumers grouped on one channel: a channel error (consumer_timeout, say)
    # takes every consumer on it down, so this bounds the blast radius.
    consumers_per_channel: int = Field(100, ge=1, le=2000)
    # Start-up waits this long to hear the other replicas before it places its
    # consumers, preferred clients first (docs/replicas.md). 0: do not wait (one
    # replica; the replicas then sort the lines out after start-up).
    replica_settle: float = Field(1.5, ge=0, le=60)
    # Quorum queues only. RabbitMQ 3.10 has no limit (a poison message loops
    # forever); 4.x defaults to 20 and then drops the message, and returns
    # messages to the back of the queue when no limit is set. We set it high
    # and dead-letter to `<prefix>.deadletter`, where the item is kept.
    delivery_limit: int = Field(1000, ge=1)
    # Quorum queues only: replicas of each new quorum queue (x-quorum-initial-group-size).
    # None: the broker's default (every node of the cluster, on 3.10). Like the
    # delivery limit, it is fixed when a queue is created: a queue declared with
    # another value (or none) refuses the declaration (docs/cluster.md).
    quorum_initial_group_size: int | None = Field(None, ge=1)
    # The leader snapshots the state log every this many records (bounded start-up).
    state_snapshot_every: int = Field(1000, ge=10)
    # How long the state log keeps records (seconds; default a week), and its segment
    # size. Fixed when the stream is created: change an existing one with a policy.
    state_retention: float = Field(7 * 86_400, ge=1)
    state_segment_bytes: int = Field(8_000_000, ge=4096)
    # The events log (`<prefix>.events.log`, a stream of every event: what the
    # SSE route reads and resumes from): kept this long (seconds) and at most
    # this many bytes, whichever is reached first. Fixed when the stream is
    # created: change an existing one with a policy.
    events_log_retention: float = Field(3_600, ge=1)
    events_log_max_bytes: int = Field(100_000_000, ge=4096)
    # GET /api/v1/events/stream: a comment line every this many seconds on an idle
    # stream (proxies keep it open; a browser that went is noticed), and at most
    # this many streams open at once (each is a consumer on its own channel).
    events_keepalive: float = Field(15.0, gt=0)
    events_max_streams: int = Field(100, ge=1)
    # Whether `item.succeeded` events are published (the other events always are).
    # Off by default: on the blocking hot path one event per item halves
    # throughput (bench/RESULTS.md); park, failure and admin events always go out.
    succeeded_events: bool = False
    # The history of what ran (daemon/core/history.py): every outcome goes, in batches,
    # to the `<prefix>.history` stream, kept `history_max_age` seconds and at most
    # `history_max_bytes` (fixed when the stream is made, like the state log's);
    # each replica keeps the last `history_per_client` entries of every client in memory.
    history: bool = True
    history_max_age: float = Field(7 * 86_400, ge=1)
    history_max_bytes: int = Field(1_000_000_000, ge=1_000_000)
    history_per_client: int = Field(200, ge=1, le=1000)

    @field_validator("nonblocking_retry_delays", "notify_retry_delays")
    @classmethod
    def _delays_are_seconds(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            delays = [float(p) for p in parts]
        except ValueError:
            raise ValueError("must be comma-separated seconds, e.g. 10,60,300") from None
        if not delays:
            raise ValueError("needs at least one delay, e.g. 10,60,300")
        if not all(math.isfinite(d) and d > 0 for d in delays):
            raise ValueError("every delay must be a finite number of seconds over 0")
        return ",".join(parts)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_urls(cls, value: SecretStr) -> SecretStr:
        # The message never quotes the value: it may hold a password.
        urls = split_urls(value.get_secret_value())
        problem = url_problem(urls)
        if problem is not None:
            raise ValueError(problem)
        return SecretStr(",".join(urls))

    @field_validator("console_url")
    @classmethod
    def _console_url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return None if value is None else value.rstrip("/")

    def topology(self) -> Topology:
        """The broker names and arguments these settings give."""
        return Topology(self.prefix, self.queue_type, self.delivery_limit,
                        self.state_retention, self.state_segment_bytes,
                        self.quorum_initial_group_size,
                        events_log_retention_s=self.events_log_retention,
                        events_log_max_bytes=self.events_log_max_bytes,
                        history_max_age_s=self.history_max_age,
                        history_max_bytes=self.history_max_bytes)

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """`amqp_url` split on commas: the brokers to try, in order."""
        return split_urls(self.amqp_url.get_secret_value())

    @property
    def process_count(self) -> int:
        """`processes` as a number: "auto" is the cores this process may run on."""
        if self.processes == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return self.processes

    def dump_json(self) -> bytes:
        """Every setting as JSON, secrets included: for a worker process, over a pipe.

        `Settings(**orjson.loads(...))` gives the same settings back: keyword
        arguments come first of all sources.
        """
        values: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Path):
                value = str(value)
            values[name] = value
        return orjson.dumps(values)

    @property
    def retry_delays(self) -> tuple[float, ...]:
        """`nonblocking_retry_delays` as numbers."""
        return tuple(float(p) for p in self.nonblocking_retry_delays.split(",") if p)

    @property
    def notify_delays(self) -> tuple[float, ...]:
        """`notify_retry_delays` as numbers."""
        return tuple(float(p) for p in self.notify_retry_delays.split(",") if p)

    @property
    def console_base(self) -> str:
        """Where the console is reached, without a trailing slash."""
        return self.console_url or f"http://{self.http_host}:{self.http_port}"

    @property
    def secure_cookies(self) -> bool:
        """Whether console cookies carry `Secure`: the console's public address is https."""
        return self.console_base.startswith("https://")

    @property
    def admin_email_list(self) -> tuple[str, ...]:
        """`admin_emails` split on commas."""
        return tuple(e.strip() for e in (self.admin_emails or "").split(",") if e.strip())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


_config_file: dict[str, Path | None] = {"path": None}


class ConfigFileError(Exception):
    """Raised when the file given with `--config` is missing or not TOML."""


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from the environment, `.env` and an optional TOML file."""
    if config is not None:
        _check_config_file(config)
    _config_file["path"] = config
    try:
        return Settings(**overrides)
    finally:
        _config_file["path"] = None


def _check_config_file(config: Path) -> None:
    """Refuse a missing file, bad TOML, or a key that is not a setting (a typo)."""
    if not config.is_file():
        raise ConfigFileError(f"config file {config} does not exist")
    try:
        data = tomllib.loads(config.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"config file {config} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigFileError(
            f"config file {config}: unknown setting(s) {', '.join(unknown)}"
        )
