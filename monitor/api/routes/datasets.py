"""A new model from an uploaded file, over HTTP: upload -> quality report -> fixes -> train -> evaluation.

Promotion is the models API's (``POST /v1/models/{version}/promote``); cancelling a training run
is the retrain API's (``POST /v1/retrain/runs/{run_id}/cancel``): a training run from a dataset
is a retrain run like any other, in the same child-process job.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse

from tuneloop.monitor.api.deps import DEFAULT, PROJECT_PATTERN, Admin, Labeller, ProjectQuery, RuntimeDep
from tuneloop.monitor.api.schemas import FixesRequest, TrainRequest
from tuneloop.monitor.datasets import (
    DatasetError,
    DatasetNotFound,
    DatasetStore,
    detect_format,
    parse,
    preview,
    validate,
)
from tuneloop.monitor.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["datasets"])
DatasetId = Annotated[str, Path(pattern=r"^ds-[0-9a-f]{12}$", description="Dataset id (ds-...)")]
_quality_lock = threading.Lock()  # one report at a time: each one encodes every row


def _datasets(rt: Runtime) -> DatasetStore:
    return DatasetStore(rt.settings.data_dir / "datasets")


def _error(e: DatasetError) -> JSONResponse:
    return JSONResponse(e.as_json(), status_code=e.status)


async def _read_upload(request: Request, limit: int) -> bytes:
    """The request body, streamed through a temporary file and refused past ``limit`` bytes."""
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as buf:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise DatasetError(f"the file is larger than the upload limit of {limit} bytes "
                                   "(server.max_body_bytes)", status=413)
            buf.write(chunk)
        buf.seek(0)
        return buf.read()


UploadParams = dict[str, Any]
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary",
    "description": "The file's bytes: CSV, TSV, Parquet or JSON Lines, as `format` or the filename says"}}}}}
"""The upload is the raw body (read as a stream, not parsed by FastAPI), so the schema states it here."""


def upload_params(
    filename: Annotated[str | None, Query(max_length=300, description="The file's name (its suffix names the format)")
                        ] = None,
    format: Annotated[Literal["csv", "tsv", "parquet", "jsonl"] | None,
                      Query(description="The file format (default: from the filename's suffix)")] = None,
    encoding: Annotated[str, Query(pattern=r"^[A-Za-z0-9._-]{1,40}$", description="Text encoding of CSV/TSV/JSONL")
                        ] = "utf-8",
) -> UploadParams:
    return {"filename": filename, "format": format, "encoding": encoding}


@router.post("/datasets/preview", summary="Parse an uploaded file, guess its text and label columns (stores nothing)",
             responses={413: {"description": "file over the upload limit"}, 415: {"description": "unknown format"},
                        422: {"description": "unreadable file"}}, openapi_extra=UPLOAD_BODY)
async def preview_upload(_: Admin, rt: RuntimeDep, request: Request,
                         params: Annotated[UploadParams, Depends(upload_params)]) -> Any:
    try:
        raw = await _read_upload(request, rt.settings.server.max_body_bytes)
        return preview(raw, detect_format(params["filename"], params["format"]), params["encoding"])
    except DatasetError as e:
        return _error(e)


@router.post("/datasets", status_code=201, summary="Upload a labelled file as a new dataset (all or nothing)",
             responses={413: {"description": "file over the upload limit"}, 415: {"description": "unknown format"},
                        422: {"description": "invalid file; `errors` lists the problems with their row numbers"}},
             openapi_extra=UPLOAD_BODY)
async def upload_dataset(
    _: Admin, rt: RuntimeDep, request: Request, params: Annotated[UploadParams, Depends(upload_params)],
    name: Annotated[str | None, Query(max_length=200)] = None,
    text_column: Annotated[str | None, Query(max_length=200)] = None,
    label_column: Annotated[str | None, Query(max_length=200)] = None,
    labels: Annotated[list[str] | None, Query(description="The label set (repeat the parameter); default: the "
                                                          "labels found in the file")] = None,
    keep_unlabelled: Annotated[bool, Query(description="Keep rows with an empty label as unlabelled texts, which "
                                                       "training self-trains on (default: refuse the file)")] = False,
) -> Any:
    try:
        raw = await _read_upload(request, rt.settings.server.max_body_bytes)
        fmt = detect_format(params["filename"], params["format"])
        rows, label_set = validate(parse(raw, fmt, params["encoding"]), text_column, label_column, labels,
                                   keep_unlabelled)
    except DatasetError as e:
        return _error(e)
    meta = {"name": name or params["filename"] or "dataset", "filename": params["filename"], "format": fmt,
            "text_column": text_column, "label_column": label_column}
    return _datasets(rt).create(rows, label_set, meta)


@router.get("/datasets", summary="Uploaded datasets, newest first")
def list_datasets(_: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return {"items": _datasets(rt).list()}


def _found(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except DatasetNotFound as e:
        raise HTTPException(404, str(e)) from None


@router.get("/datasets/{dataset_id}", summary="One dataset: labels, columns, versions")
def get_dataset(_: Admin, rt: RuntimeDep, dataset_id: DatasetId) -> dict[str, Any]:
    return _found(lambda: _datasets(rt).describe(dataset_id))


@router.get("/datasets/{dataset_id}/rows", summary="Rows of one dataset version (row_id, text, label)")
def get_rows(_: Admin, rt: RuntimeDep, dataset_id: DatasetId, version: Annotated[int | None, Query(ge=1)] = None,
             row_ids: Annotated[list[int] | None, Query(description="Only these rows")] = None,
             offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=5000)] = 100,
             ) -> dict[str, Any]:
    df = _found(lambda: _datasets(rt).rows(dataset_id, version))
    if row_ids:
        df = df[df["row_id"].isin(row_ids)]
    return {"total": len(df), "items": df.iloc[offset:offset + limit].to_dict("records")}


@router.get("/datasets/{dataset_id}/quality", summary="Data-quality report of a version (computed once, then cached)")
def get_quality(_: Admin, rt: RuntimeDep, dataset_id: DatasetId,
                version: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
    from tuneloop.retrain.quality import quality_report
    from tuneloop.retrain.report_encoder import ReportEncoder

    store = _datasets(rt)
    version = _found(lambda: store.resolve_version(dataset_id, version))
    cached = store.path(dataset_id, version, "quality.json")
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))
    with _quality_lock:
        if cached.is_file():
            return json.loads(cached.read_text(encoding="utf-8"))
        encoder = ReportEncoder(rt.settings.embedder.base or rt.settings.model.base, rt.settings.model.max_length)
        embed = store.cached_encode(dataset_id, encoder.encode, encoder.key)
        report = quality_report(store.rows(dataset_id, version), store.info(dataset_id)["labels"],
                                embed=embed, tokenizer=encoder.tokenizer,
                                max_tokens=rt.settings.model.max_length)
        report.update(dataset_id=dataset_id, version=version)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(report), encoding="utf-8")
        tmp.replace(cached)
    return report


@router.post("/datasets/{dataset_id}/fixes", status_code=201,
             summary="Drop and relabel rows: writes the next dataset version (the old one stays)")
def apply_fixes(_: Admin, rt: RuntimeDep, dataset_id: DatasetId, body: FixesRequest) -> Any:
    try:
        return _found(lambda: _datasets(rt).apply_fixes(
            dataset_id, body.drop, {r.row_id: r.label for r in body.relabel}, body.version, body.note))
    except DatasetError as e:
        return _error(e)


@router.post("/datasets/{dataset_id}/train", status_code=202,
             summary="Train a new model from the base on a dataset version (child-process job; 409 while one runs)")
def train_from_dataset(principal: Admin, rt: RuntimeDep, dataset_id: DatasetId, body: TrainRequest) -> Any:
    from tuneloop.monitor.datasets import training_snapshot
    from tuneloop.monitor.projects import ProjectExists, create_project, get_project
    from tuneloop.monitor.retraining import RetrainBusy, RetrainError

    store = _datasets(rt)
    info = _found(lambda: store.describe(dataset_id))
    version = _found(lambda: store.resolve_version(dataset_id, body.version))
    service = rt.retrain
    project = get_project(rt.store, rt.settings, body.project)
    if project is None:
        if not body.create_project:
            raise HTTPException(404, f"unknown project {body.project}; set create_project to create it")
        try:
            project = create_project(rt.store, body.project, info["labels"], settings=rt.settings)
        except (ProjectExists, ValueError) as e:
            raise HTTPException(409 if isinstance(e, ProjectExists) else 422, str(e)) from None
    if sorted(project.labels) != sorted(info["labels"]):
        raise HTTPException(409, f"project {body.project} has labels {project.labels}, the dataset "
                                 f"{info['labels']}: train it into a new project (create_project)")
    try:
        snapshot = training_snapshot(store.rows(dataset_id, version), body.holdout_fraction, body.seed,
                                     {"project": body.project, "dataset": dataset_id, "dataset_version": version,
                                      "search": body.auto},
                                     unlabelled=store.unlabelled(dataset_id) if body.self_training else None)
    except DatasetError as e:
        return _error(e)
    try:
        run_id = service.trigger(body.project, f"new model from dataset {dataset_id} v{version}", principal.name,
                                 snapshot=snapshot)
    except RetrainBusy as e:
        return JSONResponse({"detail": str(e), "run_id": e.run_id}, status_code=409)
    except RetrainError as e:
        raise HTTPException(e.status, str(e)) from None
    return {"run_id": run_id, "project": body.project, "dataset_id": dataset_id, "dataset_version": version,
            "n_train": len(snapshot.train), "n_holdout": len(snapshot.holdout),
            "n_unlabelled": 0 if snapshot.unlabelled is None else len(snapshot.unlabelled)}


@router.get("/training/{run_id}", summary="A training run's status and live progress (epoch, loss, samples/s, ETA)")
def training_progress(_: Admin, rt: RuntimeDep, run_id: Annotated[int, Path(ge=0, le=2**63 - 1)]) -> dict[str, Any]:
    from tuneloop.monitor.retraining import RunNotFound

    service = rt.retrain
    try:
        run = service.get_run(run_id, log_lines=20)
    except RunNotFound as e:
        raise HTTPException(404, str(e)) from None
    progress = run.get("progress") or {}
    fraction, elapsed = progress.get("fraction") or 0.0, progress.get("elapsed_s")
    run["eta_seconds"] = (round(elapsed * (1 - fraction) / fraction, 1)
                          if run["status"] in ("queued", "running") and elapsed and fraction > 0.1 else None)
    run["epoch"] = _last_field(service, run_id, "epoch")
    run["loss"] = _last_field(service, run_id, "loss")
    run["samples_per_s"] = _last_field(service, run_id, "samples_per_s")
    return run


def _last_field(service: Any, run_id: int, key: str) -> Any:
    """The newest value of ``key`` in the run's progress events (not every event carries every field)."""
    from tuneloop.monitor.run_files import run_dir, tail_lines

    for line in reversed(tail_lines(run_dir(service.settings.runs_dir, run_id) / "progress.jsonl", 200)):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get(key) is not None:
            return event[key]
    return None


_cards: dict[tuple[str, str, str], dict[str, Any]] = {}  # (project, version, path): a version never changes


@router.get("/models/{version}/evaluation", summary="A version's evaluation in plain words, against a simple baseline")
def get_evaluation(_: Admin, rt: RuntimeDep,
                   version: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")],
                   project: Annotated[str, Query(pattern=PROJECT_PATTERN)] = "default") -> dict[str, Any]:
    from tuneloop.monitor import registry
    from tuneloop.retrain.scorecard import scorecard

    try:
        row = registry.get_version(rt.store, project, version)
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    snapshot = row.get("data_snapshot") or ((row.get("metrics") or {}).get("snapshot") or {}).get("path")
    key = (project, version, str(row["path"]))
    if key not in _cards:
        try:
            _cards[key] = scorecard(FsPath(row["path"]), FsPath(snapshot) if snapshot else None)
        except (ValueError, FileNotFoundError) as e:
            raise HTTPException(409, f"version {version} cannot be evaluated: {e}") from None
    return {**_cards[key], "project": project, "status": row["status"]}


@router.get("/feedback/quality", summary="Labels that look mislabelled, and annotator agreement, for a project")
def feedback_quality(_: Labeller, rt: RuntimeDep, project: ProjectQuery = DEFAULT) -> dict[str, Any]:
    from tuneloop.monitor.feedback_quality import annotator_agreement, suspected_feedback
    from tuneloop.monitor.projects import labels_for

    labels = labels_for(rt.store, rt.settings, project)
    return {"project": project, "suspected": suspected_feedback(rt.store, project, labels),
            "agreement": annotator_agreement(rt.store, project),
            "excluded_from_retraining": rt.settings.retrain.exclude_suspected_labels}
