"""Typed settings: code defaults < TOML file (``--config``) < ``TUNELOOP_*`` environment.

The ``model`` and ``retrain`` sections are defined in :mod:`tuneloop.retrain.settings` (the
retrain job reads them without importing the server) and composed here like every other section.

``configs/default.toml`` documents every knob; a test keeps it equal to the defaults here,
so the embedded defaults and the documented file can never disagree.
Nested keys in the environment use ``__``: ``TUNELOOP_SERVER__PORT=9000``.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tuneloop.monitor.webhooks import Webhook
from tuneloop.retrain.settings import ModelSettings, RetrainSettings, SearchSettings, Section


class ConfigError(Exception):
    """A bad configuration value: the message is one line naming the key and what is allowed."""


class PathsSettings(Section):
    data_dir: Path = Path("tuneloop-data")
    """Everything tuneloop writes lives here: the DuckDB file, model versions, reports, snapshots."""
    db_file: str = "tuneloop.duckdb"
    """Relative to data_dir unless absolute."""


def redact_password(url: str) -> str:
    """A database URL without its password, for messages, logs and ``config show``."""
    return re.sub(r"(://[^:/@]+):[^/]*@", r"\1:***@", url)


class StoreSettings(Section):
    url: str = ""
    """Where the store lives: empty for the DuckDB file of ``paths``; ``postgresql://user:password@host:port/db``
    for a PostgreSQL database (needs the ``postgres`` extra)."""
    leader_retry_seconds: float = Field(2.0, gt=0)
    """PostgreSQL replicas: how often a replica that does not lead tries to take the leader lock (and the
    leader checks it still holds it); bounds failover after the leader dies."""
    leader_check_seconds: float = Field(5.0, gt=0, le=15)
    """PostgreSQL replicas: the leader steps down when the database does not answer its check within this
    long (a network partition), well before the database releases the lock to another replica (30 s)."""
    champion_poll_seconds: float = Field(5.0, gt=0)
    """PostgreSQL replicas: how often each replica compares its served champion (and its token list) with
    the database, besides the immediate NOTIFY; bounds how long a missed notification leaves a stale one."""

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if value:
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError as e:
                raise ValueError(f"not a URL ({e})") from None
            if parts.scheme not in ("postgresql", "postgres"):
                raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not supported; empty for the DuckDB "
                                 "file or postgresql://user:password@host:port/database")
            if not parts.hostname and "host=" not in parts.query:
                raise ValueError("a postgresql:// URL needs a host")
        return value


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    max_batch: int = Field(1000, ge=1, le=100_000)
    max_text_chars: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_future_seconds: int = Field(300, ge=0)
    """Timestamps further in the future than this are rejected."""
    unknown_feedback: Literal["pending", "reject"] = "pending"
    """Feedback for an unknown prediction id: keep it in pending_feedback until the prediction
    arrives ("pending"), or answer 404 for it ("reject")."""
    group_commit_rows: int = Field(5000, ge=1)
    group_commit_ms: float = Field(5.0, ge=0)
    write_queue_max_rows: int = Field(200_000, ge=1)
    retry_after_seconds: int = Field(1, ge=1)
    metrics_public: bool = True
    """Serve /metrics without a token (fine on loopback); false requires role admin."""


class AuthSettings(Section):
    enabled: bool = True
    """When false every request acts as admin: only for local experiments."""


class ProjectSettings(Section):
    labels: list[str] = ["negative", "neutral", "positive"]
    embedding_dim: int = Field(384, ge=1)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError("needs at least two distinct labels")
        return labels


class DriftSettings(Section):
    interval_seconds: int = Field(300, ge=1)
    window_kind: Literal["count", "time"] = "count"
    window_size: int = Field(500, ge=10)
    """Rows in the current window when window_kind = "count"."""
    window_minutes: int = Field(60, ge=1)
    reference: Literal["training", "pinned"] = "training"
    pinned_start: str = ""
    pinned_end: str = ""
    sample_size: int = Field(2000, ge=100)
    """Rows sampled per side (fixed seed) so check cost does not grow with the window."""
    resamples: int = Field(200, ge=10)
    """Permutations (never fewer than 1 / (1 - quantile) - 1) and time blocks that calibrate each threshold."""
    quantile: float = Field(0.99, gt=0.5, lt=1)
    """Drift = permutation p-value below 1 - quantile and above this quantile of the reference's time-block spread."""
    threshold_margin: float = Field(0.5, ge=0)
    """Widens both thresholds by this fraction of their distance from the median of their null."""
    accuracy_tolerance: float = Field(0.02, ge=0, lt=1)
    """Accuracy below reference accuracy minus this, and below its significance bound, is drift.

    The bound is Fisher's exact test for labelled accuracy and a bootstrap for the estimate.
    """
    checks: list[str] = [
        "embedding_drift",
        "prediction_drift",
        "confidence_drift",
        "text_length_drift",
        "oov_rate_drift",
        "non_ascii_drift",
        "labelled_accuracy",
        "estimated_accuracy",
    ]
    """Which drift checks run (names of tuneloop.monitor.drift.DEFAULT_CHECKS)."""
    min_labels: int = Field(50, ge=1)
    open_after: int = Field(2, ge=1)
    """Consecutive breaching checks that open an alert (hysteresis)."""
    close_after: int = Field(2, ge=1)
    webhooks: list[str | Webhook] = []
    """Alert receivers: a URL (tuneloop JSON) or {url = "...", format = "json" | "slack" | "alertmanager"}."""
    webhook_timeout_seconds: float = Field(5.0, gt=0)
    webhook_retries: int = Field(3, ge=0)


class EmbedderSettings(Section):
    enabled: bool = True
    """Compute missing embeddings (predictions logged without one) in the background."""
    batch_size: int = Field(256, ge=1, le=10_000)
    """Rows per round: one select, one encode, one UPDATE."""
    base: str = ""
    """Encoder for those embeddings ("" = model.base, the packaged all-MiniLM-L6-v2)."""
    poll_seconds: float = Field(1.0, gt=0)
    """How often an idle embedder looks for rows without an embedding."""
    nice: int = Field(10, ge=0, le=19)
    """OS priority of the embedding thread (Linux nice): it yields the CPU to ingestion and serving."""


class LabelQueueSettings(Section):
    strategy: Literal["uncertainty", "novelty", "mix", "cluster", "random"] = "uncertainty"
    page_size: int = Field(20, ge=1, le=500)


class RetentionSettings(Section):
    raw_days: int = Field(90, ge=1)
    interval_hours: int = Field(24, ge=1)
    pending_feedback_hours: int = Field(168, ge=1)
    """Feedback for a prediction that never arrives is dropped after this long (its TTL)."""


class DashboardSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8501, ge=0, le=65535)
    server_url: str = ""
    """Server the dashboard talks to ("" = http://server.host:server.port)."""
    token: str = ""
    refresh_seconds: int = Field(10, ge=0)


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = False


class MlflowSettings(Section):
    tracking_uri: str = ""
    """MLflow tracking store that mirrors versions and promotions ("" = off), e.g. "sqlite:///mlflow.db" or
    "http://mlflow:5000" (needs the ``mlflow`` extra). Failures to reach it are logged, never fatal."""
    experiment: str = Field("tuneloop", min_length=1)
    """MLflow experiment that holds one run per registered version."""
    artifact_location: str = ""
    """Where the experiment keeps its artifacts when tuneloop creates it ("" = the tracking store's default,
    for a local store ./mlruns in the working directory)."""

    @field_validator("tracking_uri")
    @classmethod
    def _mlflow_installed(cls, uri: str) -> str:
        import importlib.util

        try:
            missing = bool(uri) and importlib.util.find_spec("mlflow") is None
        except (ImportError, ValueError):  # a broken or blocked install
            missing = True
        if missing:
            raise ValueError("a tracking store needs the mlflow package: pip install 'tuneloop[mlflow]'")
        return uri


class Settings(BaseSettings):
    """All of tuneloop's configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="TUNELOOP_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    paths: PathsSettings = PathsSettings()
    store: StoreSettings = StoreSettings()
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    project: ProjectSettings = ProjectSettings()
    model: ModelSettings = ModelSettings()
    drift: DriftSettings = DriftSettings()
    retrain: RetrainSettings = RetrainSettings()
    search: SearchSettings = SearchSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    label_queue: LabelQueueSettings = LabelQueueSettings()
    retention: RetentionSettings = RetentionSettings()
    dashboard: DashboardSettings = DashboardSettings()
    logging: LoggingSettings = LoggingSettings()
    mlflow: MlflowSettings = MlflowSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs) beats defaults.
        return (env_settings, init_settings)

    @property
    def data_dir(self) -> Path:
        return self.paths.data_dir.expanduser().resolve()

    @property
    def db_path(self) -> Path:
        p = Path(self.paths.db_file).expanduser()
        return p if p.is_absolute() else self.data_dir / p

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def server_url(self) -> str:
        return self.dashboard.server_url or f"http://{self.server.host}:{self.server.port}"


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(root)"
    if first["type"] == "extra_forbidden":
        return f"config error: unknown key '{key}'"
    got = first.get("input")
    if isinstance(got, str) and "://" in got:
        got = redact_password(got)
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"config error: {key}: {first['msg']}{shown}"


def load_settings(config_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config_path`` (TOML) and the environment; raise ConfigError on bad values.

    ``overrides`` are dotted-free section dicts (e.g. ``paths={"data_dir": ...}``) applied over the file.
    """
    data: dict[str, Any] = {}
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config error: --config {path}: no such file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config error: {path}: not valid TOML ({e})") from None
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    try:
        return Settings(**data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def default_toml_path() -> Path:
    """The documented defaults file in a source checkout (not needed at run time)."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.toml"
