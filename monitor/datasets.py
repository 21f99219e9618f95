"""Labelled datasets uploaded for a new model: parse, validate, store versions, apply fixes.

A dataset lives in ``<data_dir>/datasets/<id>/``: ``dataset.json`` (name, labels, column mapping,
versions) and one ``v<N>.parquet`` per version with columns ``row_id`` (the row's number in the
uploaded file, 1-based, stable across versions), ``text`` and ``label``. Version 1 is the upload;
each accepted set of fixes (drop rows, relabel rows) writes the next version, so the original is
never lost and every model trained from a dataset names the exact version it saw.

An upload with ``keep_unlabelled`` keeps its rows without a label in ``unlabelled.parquet`` (row_id,
text) instead of refusing them: training self-trains on those texts (:mod:`tuneloop.retrain.selftrain`),
which is worth most with a few hundred labelled rows (see the README). They belong to the dataset,
not to a version: fixes change labelled rows only.

Nothing is half-imported: a file is parsed and validated completely (every error with its row
number) before anything is written, and the directory appears by one atomic rename.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneloop.monitor.storage import utcnow

FORMATS = ("csv", "tsv", "parquet", "jsonl")
MAX_ERRORS = 50
"""At most this many row errors are listed (the count is always the full one)."""
PREVIEW_ROWS = 10
DATASET_ID = re.compile(r"^ds-[0-9a-f]{12}$")
TEXT_NAMES = ("text", "sentence", "content", "review", "tweet", "message", "body", "comment", "utterance")
LABEL_NAMES = ("label", "labels", "sentiment", "class", "category", "target", "intent", "tag")
UNLABELLED = "unlabelled.parquet"
"""An upload's rows without a label (``keep_unlabelled``), beside the versions."""


class DatasetError(ValueError):
    """Bad input: ``status`` is the HTTP answer, ``errors`` the row-numbered problems (may be empty)."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None, status: int = 422,
                 n_errors: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.errors = (errors or [])[:MAX_ERRORS]
        self.n_errors = len(errors or []) if n_errors is None else n_errors

    def as_json(self) -> dict[str, Any]:
        return {"detail": str(self), "errors": self.errors, "n_errors": self.n_errors}


class DatasetNotFound(LookupError):
    pass


# ---- parsing -----------------------------------------------------------------------------------------


def detect_format(filename: str | None, declared: str | None = None) -> str:
    """The file format from an explicit ``declared`` value or the file name's suffix."""
    if declared:
        fmt = declared.lower().lstrip(".")
    else:
        suffix = Path(filename or "").suffix.lower().lstrip(".")
        fmt = {"pq": "parquet", "ndjson": "jsonl", "json": "jsonl", "txt": "csv"}.get(suffix, suffix)
    if fmt not in FORMATS:
        raise DatasetError(f"unsupported file format {fmt or '(none)'!r}: upload CSV, TSV, Parquet or JSONL "
                           "(name the file accordingly or pass format=...)", status=415)
    return fmt


def _decode(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(f"the file is not valid {encoding} (byte {e.start}, line {line}): save it as UTF-8, or "
                           "name its encoding with encoding=... (e.g. latin-1)",
                           [{"line": line, "error": f"undecodable byte 0x{raw[e.start]:02x}"}]) from None
    except LookupError:
        raise DatasetError(f"unknown encoding {encoding!r}") from None


def parse(raw: bytes, fmt: str, encoding: str = "utf-8") -> pd.DataFrame:
    """Every column as text (missing cells as ""), in file order; DatasetError says what and where."""
    if not raw.strip():
        raise DatasetError("the file is empty")
    if fmt == "parquet":
        try:
            df = pd.read_parquet(io.BytesIO(raw))
        except Exception as e:  # pyarrow raises several types for a non-Parquet file
            raise DatasetError(f"cannot read the file as Parquet: {str(e).splitlines()[0][:200]}") from None
        return df.astype(object).where(df.notna(), "").astype(str)
    text = _decode(raw, "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)
    if fmt == "jsonl":
        rows, errors = [], []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                errors.append({"line": n, "error": f"not JSON: {e.msg}"})
                continue
            if not isinstance(obj, dict):
                errors.append({"line": n, "error": "not a JSON object"})
                continue
            rows.append(obj)
        if errors:
            raise DatasetError(f"{len(errors)} line(s) are not JSON objects", errors)
        df = pd.DataFrame(rows)
        return df.astype(object).where(df.notna(), "").astype(str)
    try:
        return pd.read_csv(io.StringIO(text), sep="\t" if fmt == "tsv" else ",", dtype=str, keep_default_na=False,
                           na_filter=False)
    except pd.errors.EmptyDataError:
        raise DatasetError("the file has no columns") from None
    except (pd.errors.ParserError, ValueError, UnicodeError) as e:  # e.g. a NUL byte, a malformed quote
        raise DatasetError(f"cannot parse the file as {fmt.upper()}: {str(e).splitlines()[0][:300]}") from None


def guess_columns(df: pd.DataFrame) -> tuple[str | None, str | None]:
    """(text column, label column): by name first, else the longest-text column and the fewest-values one."""
    lower = {str(c).lower(): c for c in df.columns}
    text = next((lower[n] for n in TEXT_NAMES if n in lower), None)
    label = next((lower[n] for n in LABEL_NAMES if n in lower), None)
    if len(df):
        if text is None:
            lengths = {c: df[c].str.len().mean() for c in df.columns if c != label}
            text = max(lengths, key=lengths.get) if lengths else None
        if label is None:
            options = {c: df[c].nunique() for c in df.columns if c != text and 2 <= df[c].nunique() <= 50}
            label = min(options, key=options.get) if options else None
    return text, label


def preview(raw: bytes, fmt: str, encoding: str = "utf-8") -> dict[str, Any]:
    """What the mapping step shows: columns, first rows, guessed columns and the labels they imply."""
    df = parse(raw, fmt, encoding)
    text, label = guess_columns(df)
    found = df[label].str.strip().replace("", pd.NA) if label else pd.Series(dtype=object)
    labels = sorted(found.dropna().unique().tolist())
    return {"format": fmt, "n_rows": len(df), "columns": [str(c) for c in df.columns],
            "rows": df.head(PREVIEW_ROWS).to_dict("records"), "text_column": text, "label_column": label,
            "labels": labels[:200], "n_labels": len(labels), "n_unlabelled": int(found.isna().sum()) if label else 0}


def validate(df: pd.DataFrame, text_column: str | None, label_column: str | None,
             labels: list[str] | None, keep_unlabelled: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The dataset's rows (row_id, text, label) and label set; DatasetError with every row-numbered problem.
    ``keep_unlabelled``: a row with an empty label is an unlabelled text (label "") rather than an error."""
    text_column, label_column = text_column or guess_columns(df)[0], label_column or guess_columns(df)[1]
    found = [str(c) for c in df.columns]
    if not text_column or text_column not in df.columns:
        raise DatasetError(f"no text column {text_column!r} in the file (columns: {found}); pick one with text_column")
    if not label_column or label_column not in df.columns:
        raise DatasetError(f"no label column {label_column!r} in the file (columns: {found}); pick one with "
                           "label_column")
    if text_column == label_column:
        raise DatasetError("the text and label columns must differ")
    if not len(df):
        raise DatasetError("the file has a header but no rows")
    out = pd.DataFrame({"row_id": range(1, len(df) + 1), "text": df[text_column].astype(str).to_numpy(),
                        "label": df[label_column].astype(str).str.strip().to_numpy()})
    blank = out["label"] == ""
    if keep_unlabelled:
        blank &= out["text"].str.strip() == ""  # an unlabelled row still needs a text
    errors = [{"row": int(r), "error": "empty text and label" if keep_unlabelled else "empty label"}
              for r in out.loc[blank, "row_id"]]
    if labels:
        labels = [str(x).strip() for x in labels]
        if len(set(labels)) != len(labels) or "" in labels:
            raise DatasetError(f"the label set {labels} has empty or repeated labels")
        outside = out[(out["label"] != "") & ~out["label"].isin(labels)]
        errors += [{"row": int(r), "error": f"label {lab!r} is not one of {labels}"}
                   for r, lab in zip(outside["row_id"], outside["label"], strict=True)]
    if errors:
        errors.sort(key=lambda e: e["row"])
        raise DatasetError(f"{len(errors)} row(s) have a bad label; nothing was imported", errors)
    present = sorted(set(out["label"]) - {""})
    if len(present) < 2:
        raise DatasetError(f"every labelled row has the label {present[0]!r}: a classifier needs at least two labels"
                           if present else "no row has a label: a classifier needs at least two labels")
    return out, list(labels) if labels else present


# ---- storage -----------------------------------------------------------------------------------------


@dataclass
class DatasetStore:
    """Datasets under ``root`` (``<data_dir>/datasets``); see the module docstring for the layout."""

    root: Path

    def _dir(self, dataset_id: str) -> Path:
        if not DATASET_ID.match(dataset_id) or not (self.root / dataset_id / "dataset.json").is_file():
            raise DatasetNotFound(f"no dataset {dataset_id!r}")
        return self.root / dataset_id

    def create(self, rows: pd.DataFrame, labels: list[str], meta: dict[str, Any]) -> dict[str, Any]:
        """Store validated ``rows`` as version 1 of a new dataset, atomically; return its description.
        Rows with an empty label go to ``unlabelled.parquet``."""
        self.root.mkdir(parents=True, exist_ok=True)
        dataset_id = f"ds-{uuid.uuid4().hex[:12]}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        blank = rows["label"] == ""
        try:
            info = {"id": dataset_id, "labels": labels, "created_at": utcnow().isoformat(), "versions": [],
                    "n_unlabelled": int(blank.sum()), **meta}
            if blank.any():
                rows.loc[blank, ["row_id", "text"]].reset_index(drop=True).to_parquet(tmp / UNLABELLED, index=False)
            rows = rows[~blank]
            info["versions"].append(self._write_version(tmp, 1, rows, None, {"uploaded": meta.get("filename")}))
            (tmp / "dataset.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
            os.replace(tmp, self.root / dataset_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.describe(dataset_id)

    @staticmethod
    def _write_version(directory: Path, version: int, rows: pd.DataFrame, parent: int | None,
                       change: dict[str, Any]) -> dict[str, Any]:
        path = directory / f"v{version}.parquet"
        tmp = path.with_suffix(".tmp")
        rows[["row_id", "text", "label"]].reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return {"version": version, "parent": parent, "n_rows": len(rows), "created_at": utcnow().isoformat(),
                "class_counts": {str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()},
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "change": change}

    def info(self, dataset_id: str) -> dict[str, Any]:
        return json.loads((self._dir(dataset_id) / "dataset.json").read_text(encoding="utf-8"))

    def describe(self, dataset_id: str) -> dict[str, Any]:
        info = self.info(dataset_id)
        return {**info, "latest_version": info["versions"][-1]["version"]}

    def list(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        out = [self.describe(p.name) for p in self.root.iterdir() if DATASET_ID.match(p.name)
               and (p / "dataset.json").is_file()]
        return sorted(out, key=lambda d: d["created_at"], reverse=True)

    def resolve_version(self, dataset_id: str, version: int | None) -> int:
        versions = [v["version"] for v in self.info(dataset_id)["versions"]]
        if version is None:
            return versions[-1]
        if version not in versions:
            raise DatasetNotFound(f"dataset {dataset_id} has no version {version} (versions: {versions})")
        return version

    def rows(self, dataset_id: str, version: int | None = None) -> pd.DataFrame:
        version = self.resolve_version(dataset_id, version)
        return pd.read_parquet(self._dir(dataset_id) / f"v{version}.parquet")

    def unlabelled(self, dataset_id: str) -> pd.DataFrame:
        """The upload's rows without a label (row_id, text); empty when it kept none."""
        path = self._dir(dataset_id) / UNLABELLED
        if not path.is_file():
            return pd.DataFrame({"row_id": pd.Series(dtype=int), "text": pd.Series(dtype=object)})
        return pd.read_parquet(path)

    def path(self, dataset_id: str, version: int, name: str) -> Path:
        """A per-version side file (the cached quality report)."""
        return self._dir(dataset_id) / f"v{version}.{name}"

    def cached_encode(self, dataset_id: str, encode: Callable[[list[str]], np.ndarray],
                      encoder_key: str) -> Callable[[list[str]], np.ndarray]:
        """``encode`` with a per-dataset store of its embeddings by text (sha1): fixes drop and relabel rows
        but never change a text, so the report of every later version reuses the upload's embeddings.
        ``encoder_key`` names the encoder exactly (base, max length, variant such as int8 weights): another
        encoder gets another store."""
        path = self._dir(dataset_id) / f"embeddings-{hashlib.sha1(encoder_key.encode()).hexdigest()[:12]}.npz"

        def cached(texts: list[str]) -> np.ndarray:
            keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
            known: dict[str, np.ndarray] = {}
            if path.is_file():
                with np.load(path) as z:
                    known = dict(zip(z["keys"].tolist(), z["emb"], strict=True))
            missing = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
            if missing:
                known.update(zip([keys[i] for i in missing], encode([texts[i] for i in missing]), strict=True))
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, keys=np.array(list(known)), emb=np.stack(list(known.values())))
                tmp.replace(path)
            return np.stack([known[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

        return cached

    def apply_fixes(self, dataset_id: str, drop: list[int], relabel: dict[int, str], base: int | None = None,
                    note: str = "") -> dict[str, Any]:
        """Write the next version: ``base`` (default latest) minus ``drop`` with ``relabel`` applied."""
        info = self.info(dataset_id)
        base = self.resolve_version(dataset_id, base)
        rows = self.rows(dataset_id, base)
        known = set(rows["row_id"].tolist())
        errors = [{"row": r, "error": "no such row in this version"} for r in sorted(set(drop) | set(relabel))
                  if r not in known]
        errors += [{"row": r, "error": f"label {lab!r} is not one of {info['labels']}"}
                   for r, lab in sorted(relabel.items()) if lab not in info["labels"]]
        errors += [{"row": r, "error": "both dropped and relabelled"} for r in sorted(set(drop) & set(relabel))]
        if errors:
            raise DatasetError(f"{len(errors)} fix(es) cannot be applied; nothing was changed", errors)
        if not drop and not relabel:
            raise DatasetError("no fixes given (drop and relabel are both empty)")
        out = rows[~rows["row_id"].isin(drop)].copy()
        changed = out["row_id"].isin(relabel)
        out.loc[changed, "label"] = out.loc[changed, "row_id"].map(relabel)
        if out["label"].nunique() < 2:
            raise DatasetError("after these fixes fewer than two labels are left; nothing was changed")
        version = max(v["version"] for v in info["versions"]) + 1
        directory = self._dir(dataset_id)
        entry = self._write_version(directory, version, out, base, {
            "dropped": len(drop), "relabelled": len(relabel), "note": note[:500]})
        info["versions"].append(entry)
        tmp = directory / "dataset.json.tmp"
        tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
        os.replace(tmp, directory / "dataset.json")
        return self.describe(dataset_id)


def training_snapshot(rows: pd.DataFrame, holdout_fraction: float, seed: int, meta: dict[str, Any],
                      unlabelled: pd.DataFrame | None = None) -> Any:
    """A retrain snapshot of a dataset version: a seeded, stratified random holdout (unbiased) and the rest,
    with ``unlabelled`` (row_id, text) as the texts to self-train on.

    Exact duplicate texts stay on one side, so no held-out text was trained on (the job also leaves any
    unlabelled text equal to a holdout text out of the pool).
    """
    import numpy as np

    from tuneloop.retrain.dataset import Snapshot
    from tuneloop.retrain.quality import normalise_text

    df = rows.assign(id=rows["row_id"].map(lambda r: f"row-{r}"), key=rows["text"].map(normalise_text))
    first = df.drop_duplicates("key")
    rng = np.random.default_rng(seed)
    held: list[str] = []
    for _, group in first.groupby("label", sort=True):
        k = int(round(len(group) * holdout_fraction))
        if len(group) >= 4 and k >= 1:
            held += group["key"].to_numpy()[rng.permutation(len(group))[:k]].tolist()
    is_held = df["key"].isin(set(held))
    holdout, train = df[is_held], df[~is_held]
    if len(holdout) < 2 or train["label"].nunique() < 2:
        raise DatasetError(f"too few rows to hold some out for the evaluation ({len(df)} rows): upload more")
    keep = ["id", "text", "label"]
    train = train[keep].iloc[rng.permutation(len(train))].reset_index(drop=True)
    pool = None
    if unlabelled is not None and len(unlabelled):
        pool = pd.DataFrame({"id": unlabelled["row_id"].map(lambda r: f"row-{r}"), "text": unlabelled["text"]})
    return Snapshot(train=train.assign(origin="new"), holdout=holdout[keep].reset_index(drop=True),
                    n_new=len(df), n_new_train=len(train), meta=dict(meta), unlabelled=pool)
