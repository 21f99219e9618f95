"""Model versions: one directory per version under ``models_dir``, written atomically.

Layout of ``<models_dir>/<version>/``::

    adapter/               LoRA adapter (peft save_pretrained)
    head.safetensors       linear head weights
    labels.json            label map {"labels": [...]} (index = output column)
    training_config.json   model settings, base (as configured + resolved path), parent version, software
    metrics.json           validation / evaluation metrics
    manifest.json          the data it saw: rows, counts per class, sha256 of the sorted (text, label) pairs
    ids.txt                optional: ids of the rows it saw, one per line
    *.parquet              optional extra files written with it (e.g. reference.parquet, the drift reference)
    COMPLETE               written last

Everything is first written to ``<models_dir>/.tmp-<version>-...`` and fsynced, then renamed into
place: a reader sees a whole version or none, and a crash leaves only a temp dir that
:func:`list_versions` ignores and :func:`remove_stale_temp` deletes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tuneloop.retrain.encoder import resolve_base
from tuneloop.retrain.settings import ModelSettings

if TYPE_CHECKING:
    from tuneloop.retrain.model import TextClassifier

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TMP_PREFIX = ".tmp-"
COMPLETE = "COMPLETE"
CONFIG_FILE, METRICS_FILE, MANIFEST_FILE, IDS_FILE = "training_config.json", "metrics.json", "manifest.json", "ids.txt"
REQUIRED_FILES = ("adapter/adapter_config.json", "head.safetensors", "labels.json",
                  CONFIG_FILE, METRICS_FILE, MANIFEST_FILE)


def validate_version_name(name: str) -> str:
    """Return ``name`` if it is a safe directory name (letters, digits, '.', '_', '-'; no leading dot)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid version name {name!r}: use 1-64 of A-Z a-z 0-9 . _ - , starting with a "
                         "letter or digit")
    return name


def data_manifest(df: pd.DataFrame) -> dict[str, Any]:
    """Describe a labelled DataFrame so a version records what it was trained on.

    The hash is over the sorted (text, label) pairs: the same rows in any order give the same hash.
    """
    pairs = sorted(zip(df["text"].astype(str), df["label"].astype(str), strict=True))
    h = hashlib.sha256()
    for text, label in pairs:
        h.update(json.dumps([text, label], ensure_ascii=False).encode("utf-8") + b"\n")
    counts = df["label"].astype(str).value_counts()
    return {"n_rows": len(df), "label_counts": {str(k): int(v) for k, v in sorted(counts.items())},
            "sha256": h.hexdigest()}


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path | dt.datetime):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, ensure_ascii=False), encoding="utf-8")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _software() -> dict[str, str]:
    out = {}
    for dist in ("tuneloop", "torch", "transformers", "peft"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def write_version(models_dir: str | os.PathLike[str], version: str, classifier: TextClassifier,
                  metrics: dict[str, Any], manifest: dict[str, Any], parent: str | None = None,
                  ids: Iterable[Any] | None = None, extra_files: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write ``classifier`` as ``<models_dir>/<version>`` atomically; FileExistsError if it exists.

    ``extra_files`` ({file name: DataFrame}) are written as Parquet inside the version before the
    rename, e.g. ``reference.parquet`` (the model's predictions on its training data, for drift checks).
    """
    validate_version_name(version)
    if parent is not None:
        validate_version_name(parent)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / version
    if target.exists():
        raise FileExistsError(f"version {version} already exists in {models_dir}")
    tmp = models_dir / f"{TMP_PREFIX}{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        classifier.save(tmp)
        lora = classifier.encoder.peft_config["default"]
        _write_json(tmp / CONFIG_FILE, {
            "version": version,
            "parent": parent,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "base": classifier.base,
            "base_path": str(resolve_base(classifier.base).resolve()),
            "base_model_type": classifier.info.model_type if classifier.info else None,
            "pooling": classifier.pooling,
            "labels": classifier.labels,
            "settings": classifier.settings.model_dump(mode="json"),
            "lora": {"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,
                     "target_modules": sorted(lora.target_modules)},
            "software": _software(),
        })
        _write_json(tmp / METRICS_FILE, metrics)
        manifest = dict(manifest)
        if ids is not None:
            ids = [str(i) for i in ids]
            (tmp / IDS_FILE).write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
            manifest.update(ids_file=IDS_FILE, n_ids=len(ids))
        _write_json(tmp / MANIFEST_FILE, manifest)
        for name, frame in (extra_files or {}).items():
            if Path(name).name != name or name.startswith(".") or name in (COMPLETE, IDS_FILE, *REQUIRED_FILES):
                raise ValueError(f"extra file name {name!r} must be a plain file name")
            frame.to_parquet(tmp / name, index=False)
        for p in sorted(tmp.rglob("*"), reverse=True):  # files, then their directories
            _fsync(p)
        (tmp / COMPLETE).write_text(dt.datetime.now(dt.UTC).isoformat(timespec="seconds") + "\n")
        _fsync(tmp / COMPLETE)
        _fsync(tmp)
        if target.exists():
            raise FileExistsError(f"version {version} already exists in {models_dir}")
        try:
            os.rename(tmp, target)  # atomic; fails if another writer renamed a (non-empty) version there
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(f"version {version} already exists in {models_dir}") from None
            raise
        _fsync(models_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def is_complete(path: str | os.PathLike[str]) -> bool:
    """A finished version: has the COMPLETE marker, or (written by hand) every required file."""
    path = Path(path)
    if not path.is_dir() or path.name.startswith("."):
        return False
    return (path / COMPLETE).is_file() or all((path / f).is_file() for f in REQUIRED_FILES)


def read_version_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Labels, training config, metrics and manifest of a version, without loading the model."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete model version")

    def read(name: str) -> Any:
        return json.loads((path / name).read_text(encoding="utf-8"))

    return {"version": path.name, "labels": read("labels.json")["labels"], "training_config": read(CONFIG_FILE),
            "metrics": read(METRICS_FILE), "manifest": read(MANIFEST_FILE)}


def load_version(path: str | os.PathLike[str], threads: int = 0, trainable: bool = False,
                 device: str = "auto") -> TextClassifier:
    """Load a version directory as a TextClassifier on the base recorded in its training_config.json.

    ``threads`` and ``device`` are this machine's, not those the version was trained with."""
    from tuneloop.retrain.model import TextClassifier

    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete model version")
    cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    known = ModelSettings.model_fields
    settings = ModelSettings(**{k: v for k, v in cfg.get("settings", {}).items() if k in known})
    settings.threads = threads
    settings.device = device
    base, base_path = cfg["base"], Path(cfg.get("base_path") or cfg["base"])
    # The resolved path first (a tiny or custom base dir); a package name still resolves after a venv moves.
    clf = TextClassifier.from_dir(path, base_path if base_path.is_dir() else resolve_base(base), settings,
                                  trainable=trainable)
    clf.base = base
    return clf


def _natural_key(name: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def list_versions(models_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the complete versions in ``models_dir`` in natural order (v2 before v10)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    names = [p.name for p in models_dir.iterdir() if NAME_RE.fullmatch(p.name) and is_complete(p)]
    return sorted(names, key=_natural_key)


def new_version_name(models_dir: str | os.PathLike[str]) -> str:
    """The next free ``v<N>``: one past the highest number used by any entry, complete or being written."""
    models_dir = Path(models_dir)
    used = [0]
    if models_dir.is_dir():
        for p in models_dir.iterdir():
            m = re.fullmatch(r"v(\d+)", p.name) or re.fullmatch(r"\.tmp-v(\d+)-.*", p.name)
            if m:
                used.append(int(m.group(1)))
    return f"v{max(used) + 1}"


def remove_stale_temp(models_dir: str | os.PathLike[str], older_than_seconds: float = 0.0) -> list[str]:
    """Delete leftover ``.tmp-*`` dirs of interrupted writes; return their names.

    Pass ``older_than_seconds`` when another process may be writing a version right now.
    """
    models_dir = Path(models_dir)
    removed: list[str] = []
    if not models_dir.is_dir():
        return removed
    now = time.time()
    for p in models_dir.iterdir():
        if p.name.startswith(TMP_PREFIX) and now - p.stat().st_mtime >= older_than_seconds:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)
