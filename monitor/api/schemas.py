"""Request and response models of the HTTP API (pydantic v2): every route's bodies and answers.

Request bodies derive from the one :class:`~tuneloop.monitor.wire.Strict` base; the collector's
records (:mod:`tuneloop.monitor.wire`) are re-exported here with them.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneloop.monitor.imports import KEY_FIELD_PATTERN
from tuneloop.monitor.operations import NAME_PATTERN as BACKUP_NAME_PATTERN
from tuneloop.monitor.projects import OVERRIDABLE, PROJECT_PATTERN, SERVER_WIDE
from tuneloop.monitor.storage import DEFAULT_PROJECT
from tuneloop.monitor.wire import (
    ID_MAX_CHARS,
    FeedbackBatch,
    FeedbackRecord,
    FeedbackSource,
    PredictionBatch,
    PredictionRecord,
    Strict,
)
from tuneloop.retrain.versions import NAME_RE

VERSION_PATTERN = NAME_RE.pattern
__all__ = ["ID_MAX_CHARS", "FeedbackBatch", "FeedbackRecord", "PredictionBatch", "PredictionRecord"]  # the wire format


WHITESPACE = r"\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
"""Python's whitespace (``str.strip``) and JavaScript's (``\\s`` in the schema's ECMA-262 regexes), as one class."""
NOT_BLANK = f"[^{WHITESPACE}]"
"""A string with content: the same pattern in the schema and in the server's checks."""
_NOT_BLANK_RE = re.compile(NOT_BLANK)


def is_blank(text: str) -> bool:
    return _NOT_BLANK_RE.search(text) is None


def whole_number(value: Any) -> Any:
    """JSON has one number type: ``30.0`` is the integer 30 (as JSON Schema's ``integer`` says); ``30.5`` is not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class IngestResult(BaseModel):
    """Rows written (after the commit) and rows skipped because their id was already stored."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 998, "duplicates": 2}]})

    accepted: int
    duplicates: int


class FeedbackResult(BaseModel):
    """``pending``: rows parked until their prediction arrives; ``unknown``: those prediction ids."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"accepted": 1, "duplicates": 0, "pending": 0, "unknown": []}
    ]})

    accepted: int
    duplicates: int
    pending: int
    unknown: list[str]


class PredictionItem(BaseModel):
    id: str
    ts: datetime
    model_version: str | None
    text: str
    label: str
    confidence: float | None
    probs: dict[str, float] | None
    latency_ms: float | None
    metadata: dict[str, Any] | None
    true_label: str | None = Field(description="Latest feedback (human beats import beats rule); null if none.")
    feedback_source: FeedbackSource | None
    feedback_ts: datetime | None
    embedding: list[float] | None = Field(None, description="Only with include_embedding=true.")


class PredictionPage(BaseModel):
    items: list[PredictionItem]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class ModelVersionTraffic(BaseModel):
    model_version: str
    n: int
    mean_confidence: float | None


class StatsBucket(BaseModel):
    bucket: datetime = Field(description="Start of the hour or day (UTC).")
    n: int = Field(description="Predictions made in the bucket.")
    mean_confidence: float | None
    n_labelled: int = Field(description="Predictions of the bucket that have feedback.")
    accuracy: float | None = Field(description="Accuracy over the labelled ones; null without labels.")
    estimated_accuracy: float | None = Field(
        None, description="Label-free accuracy estimate from calibrated confidence; null until computed."
    )
    by_model_version: list[ModelVersionTraffic]


class Stats(BaseModel):
    project: str
    bucket: Literal["minute", "hour", "day"]
    items: list[StatsBucket]


class TokenCreate(Strict):
    role: Literal["ingest", "label", "admin"]
    name: str = Field("", max_length=128, description="A name to recognise (and revoke) the token by.")


class TokenCreated(BaseModel):
    token: str = Field(description="Shown once; only its hash is stored.")
    name: str
    role: str


class TokenInfo(BaseModel):
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


# -- POST /v1/predict -------------------------------------------------------------------------------
class PredictRequest(Strict):
    texts: list[str] = Field(description="Texts to classify (1 to server.max_batch, each at most "
                                         "server.max_text_chars characters).",
                             json_schema_extra={"minItems": 1, "items": {"type": "string", "minLength": 1,
                                                                         "pattern": NOT_BLANK}})
    project: str | None = Field(None, pattern=PROJECT_PATTERN, description="Project; default 'default'.")
    metadata: dict[str, Any] | None = Field(None, description="Stored with every prediction of this request.")

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        if not texts:
            raise ValueError("texts is empty: send at least one text")
        empty = [i for i, t in enumerate(texts) if is_blank(t)]
        if empty:
            raise ValueError(f"texts {empty[:10]} are empty or blank; every text needs content")
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"text {i} is not valid Unicode (lone surrogate escape)") from None
        return texts

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        if metadata is not None:
            try:
                json.dumps(metadata, allow_nan=False)
            except ValueError as e:
                raise ValueError(f"metadata must be plain JSON: {e}") from None
        return metadata


class Prediction(BaseModel):
    id: str = Field(description="Prediction id: send feedback for it with POST /v1/feedback.")
    label: str
    probs: dict[str, float]
    confidence: float


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Prediction]


# -- Models -----------------------------------------------------------------------------------------
class PromoteRequest(Strict):
    reason: str | None = Field(None, max_length=1000)
    force: bool = Field(False, description="Promote even a version the gate rejected.")
    project: str | None = Field(None, pattern=PROJECT_PATTERN)


class RollbackRequest(Strict):
    reason: str | None = Field(None, max_length=1000)
    project: str | None = Field(None, pattern=PROJECT_PATTERN)


class RegisterRequest(Strict):
    status: str = Field("challenger", pattern="^(challenger|archived|rejected)$")
    parent: str | None = Field(None, pattern=VERSION_PATTERN, max_length=64,
                               description="Defaults to the parent in the version's training_config.json.")
    data_snapshot: str | None = None
    project: str | None = Field(None, pattern=PROJECT_PATTERN)


# -- Retraining -------------------------------------------------------------------------------------
class RetrainRequest(Strict):
    project: str | None = Field(None, pattern=PROJECT_PATTERN)
    reason: str | None = Field(None, max_length=500, description="Why (recorded with the run).")
    now: bool = Field(True, description="Skip the cooldown after the last run (one run at a time still holds).")


# -- Projects and bulk imports ----------------------------------------------------------------------
ProjectField = Field(DEFAULT_PROJECT, pattern=PROJECT_PATTERN, description="Monitored project (model).")
MAX_IMPORT_RECORDS = 100_000


def overrides_schema() -> dict[str, Any]:
    """The schema of a project's ``settings``: the keys of each section a project may override, and no others."""
    sections = {}
    for name, model in OVERRIDABLE.items():
        keys = model.model_json_schema()["properties"]
        sections[name] = {"type": "object", "additionalProperties": False,
                          "properties": {k: v for k, v in keys.items() if k not in SERVER_WIDE.get(name, ())}}
    return {"type": "object", "properties": sections, "additionalProperties": False}


class ProjectCreate(Strict):
    project: str = Field(pattern=PROJECT_PATTERN, description="Name: 1-64 of A-Z a-z 0-9 . _ -")
    labels: list[Annotated[str, Field(pattern=NOT_BLANK)]] = Field(
        min_length=2, json_schema_extra={"uniqueItems": True},
        description="The model's label set, at least two distinct labels.")
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='Overrides of config sections, e.g. {"drift": {"window_size": 200}}.',
        json_schema_extra=lambda schema: schema.update(overrides_schema()),
    )

    @field_validator("settings")
    @classmethod
    def _json_types(cls, settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Values of the JSON types the schema names: ``false`` is no number, ``"5"`` no integer (strict mode);
        ``500.0`` is the integer 500."""
        checked = {}
        for name, values in settings.items():
            checked[name] = {key: whole_number(value) for key, value in values.items()}
            model = OVERRIDABLE.get(name)
            if model is None:
                continue  # named in the create_project error
            known = set(model.model_fields) - SERVER_WIDE.get(name, set())  # the others: named in create_project
            try:
                model.model_validate({k: v for k, v in checked[name].items() if k in known}, strict=True)
            except ValidationError as e:
                first = e.errors()[0]
                key = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"settings.{name}.{key}: {first['msg']}") from None
        return checked


class ReferenceRecord(Strict):
    text: str = Field(min_length=1)
    prediction: str = Field(min_length=1, description="What the model predicted.")
    label: str | None = Field(None, description="The true label, when known (calibrates the accuracy estimate).")
    probabilities: dict[str, float] | None = Field(None, description="{label: probability}; its max is the confidence.")
    confidence: float | None = Field(None, ge=0, le=1)
    embedding: list[float] | None = None


class ReferenceImportBody(Strict):
    project: str = ProjectField
    records: list[ReferenceRecord] = Field(min_length=1, max_length=MAX_IMPORT_RECORDS)


class FeedbackImportRecord(Strict):
    prediction_id: str | None = Field(None, description="With by = 'id'.")
    key: str | None = Field(None, description="With by = 'key': the value of metadata.<key_field>.")
    label: str = Field(pattern=NOT_BLANK, description="One of the project's labels.")
    ts: datetime | None = None
    annotator: str | None = None




def _records_need(field: str) -> dict[str, Any]:
    return {"properties": {"records": {"items": {
        "required": [field], "properties": {field: {"type": "string", "pattern": NOT_BLANK}}}}}}


class FeedbackImportBody(Strict):
    """``by = 'id'``: every record names its ``prediction_id``; ``by = 'key'``: its ``key``, and the body its
    ``key_field`` (the schema says so too, with if/then/else)."""

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"by": {"const": "key"}}, "required": ["by"]},
        "then": {**_records_need("key"), "required": ["key_field"]},
        "else": _records_need("prediction_id"),
    })

    project: str = ProjectField
    by: Literal["id", "key"] = "id"
    key_field: str | None = Field(None, description="Metadata field holding the client key (by = 'key'); dots "
                                                    "address nested fields.", pattern=KEY_FIELD_PATTERN)
    annotator: str | None = None
    records: list[FeedbackImportRecord] = Field(min_length=1, max_length=MAX_IMPORT_RECORDS)

    @model_validator(mode="after")
    def _matching_keys(self) -> FeedbackImportBody:
        field = "prediction_id" if self.by == "id" else "key"
        if self.by == "key" and self.key_field is None:
            raise ValueError("key_field is required when by = 'key' (the metadata field holding the client key)")
        missing = [i for i, r in enumerate(self.records) if is_blank(getattr(r, field) or "")]
        if missing:
            raise ValueError(f"records {missing[:10]} need a non-blank {field!r} when by = {self.by!r}")
        return self


# -- Datasets ---------------------------------------------------------------------------------------
class Relabel(Strict):
    row_id: int = Field(ge=1)
    label: str = Field(min_length=1, max_length=200)


class FixesRequest(Strict):
    version: int | None = Field(None, ge=1, description="The version the fixes apply to (default: latest)")
    drop: list[int] = Field([], max_length=1_000_000)
    relabel: list[Relabel] = Field([], max_length=1_000_000)
    note: str = Field("", max_length=500)


class TrainRequest(Strict):
    version: int | None = Field(None, ge=1, description="Dataset version (default: latest)")
    project: str = Field("default", pattern=PROJECT_PATTERN)
    create_project: bool = Field(False, description="Create the project with the dataset's labels first")
    holdout_fraction: float = Field(0.2, gt=0, lt=0.5, description="Share of rows held out for the evaluation")
    seed: int = Field(0, ge=0)
    self_training: bool = Field(True, description="Also learn from the dataset's unlabelled rows (uploaded "
                                                  "with keep_unlabelled): confident, agreed pseudo-labels "
                                                  "(retrain.pseudo_*)")
    auto: bool = Field(False, description="Try a few training configurations (search.trials, within "
                                          "search.minutes) and keep the best on validation; search.enabled "
                                          "does this for every dataset")


# -- Backups and retention --------------------------------------------------------------------------
class BackupRequest(Strict):
    name: str | None = Field(None, pattern=BACKUP_NAME_PATTERN,
                             description="Directory name under <data_dir>/backups (default backup-<UTC time>).")
    include_models: bool = Field(True, strict=True, description="Copy the registered model version directories too.")


class BackupInfo(BaseModel):
    path: str
    name: str
    created_at: str
    schema_version: int
    tables: dict[str, int]
    models: list[str]
    bytes: int
    seconds: float


class BackupListItem(BaseModel):
    name: str
    path: str
    created_at: str
    schema_version: int
    tables: dict[str, int]
    models: list[str]


class RetentionRequest(Strict):
    raw_days: Annotated[int, Field(ge=1, le=1_000_000, strict=True), BeforeValidator(whole_number)] | None = Field(
        None, description="Default retention.raw_days.")


class RetentionInfo(BaseModel):
    cutoff: datetime
    predictions: int
    feedback: int
    pending_feedback: int
    hours_rolled_up: int
    seconds: float
