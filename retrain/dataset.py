"""The data of one retrain: new feedback split into train + holdout, a replay buffer, a golden set.

Everything here works on DataFrames (the service exports them from the store) and on a snapshot
directory of Parquet files, so the training job never needs the database.

Parts of a :class:`Snapshot`:

* ``train``   — the new labels minus the holdout, plus the replay rows (column ``origin`` says which);
* ``holdout`` — every new label of the evaluation slice (:mod:`tuneloop.retrain.evaluation_slice`:
  uniformly random traffic, never queue picks) not already used by an earlier run's gate decision:
  the gate compares challenger and champion on it; never trained on in this run;
* ``golden``  — an optional operator-pinned labelled set (``retrain.golden_path``); never trained on;
* replay      — a stratified sample of older labelled data (earlier feedback and the champion's own
  training rows), ``replay_ratio`` rows per new training row, at most ``replay_max``: it keeps the
  challenger from forgetting what the champion knew.

A text that appears in the holdout or golden set is dropped from train and replay (retweets make
exact duplicates common), so neither evaluation set leaks into training.

Repeated tests: rows that an earlier run's gate decision already saw are never a holdout again (they
join the training data instead). Every decision is then an independent test on fresh random rows, so
its false-promotion rate stays at most alpha however many rejections came before, and a rejected
challenger cannot be retried until noise on the same rows lets it pass. Fresh rows rather than alpha
spending: spending would make every later test stricter, so a real gain after a few rejections could
no longer pass, while fresh rows cost no labels (used holdout rows still train the next challenger).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneloop.retrain.evaluation_slice import in_slice
from tuneloop.retrain.settings import RetrainSettings
from tuneloop.retrain.trainer import check_labelled, read_labelled
from tuneloop.retrain.versions import data_manifest

PARTS = ("train", "holdout", "golden")
MANIFEST = "manifest.json"
UNLABELLED_PART = "unlabelled.parquet"  # Snapshot.unlabelled, when it has rows
KEEP_COLUMNS = ("id", "text", "label", "predicted_label", "ts", "origin")


@dataclass
class Snapshot:
    """Training and evaluation data of one retrain (see the module docstring)."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    golden: pd.DataFrame | None = None
    n_new: int = 0  # new labelled rows offered (before dropping duplicates of the evaluation sets)
    n_new_train: int = 0
    n_replay: int = 0
    n_replay_available: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # free-form facts (project, cutoff, seed ...)
    unlabelled: pd.DataFrame | None = None  # texts (id, text) to self-train on, e.g. a dataset's unlabelled rows

    def parts(self) -> dict[str, pd.DataFrame]:
        out = {"train": self.train, "holdout": self.holdout}
        if self.golden is not None:
            out["golden"] = self.golden
        return out


def _normalise(df: pd.DataFrame | None, source: str) -> pd.DataFrame:
    """Columns text/label validated; id as str (made up when absent); only the columns we keep."""
    if df is None or len(df) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("id", "text", "label")})
    out = check_labelled(df, source)
    if "id" not in out.columns:
        out["id"] = [f"{source}-{i}" for i in range(len(out))]
    out["id"] = out["id"].astype(str)
    return out[[c for c in KEEP_COLUMNS if c in out.columns]]


def _text_key(texts: pd.Series) -> pd.Series:
    return texts.astype(str).str.strip().str.lower()


def fresh_slice_split(df: pd.DataFrame, share: float, used: set[str] | frozenset[str] = frozenset()
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, holdout): holdout = the rows of the evaluation slice of ``share`` whose id is not in ``used``."""
    if len(df) == 0:
        return df.copy(), df.copy()
    ids = df["id"].astype(str)
    mask = in_slice(ids, share) & ~ids.isin(used).to_numpy()
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def allocate(n: int, counts: dict[str, int]) -> dict[str, int]:
    """Split ``n`` over classes in proportion to ``counts`` (largest remainder), never above a count."""
    total = sum(counts.values())
    n = min(n, total)
    if n <= 0 or total == 0:
        return {k: 0 for k in counts}
    exact = {k: n * v / total for k, v in counts.items()}
    out = {k: min(int(np.floor(x)), counts[k]) for k, x in exact.items()}
    for k in sorted(counts, key=lambda k: (-(exact[k] - out[k]), k)):
        if sum(out.values()) >= n:
            break
        if out[k] < counts[k]:
            out[k] += 1
    return out


def stratified_sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows keeping the class proportions of ``df`` (seeded, without replacement)."""
    if n <= 0 or len(df) == 0:
        return df.iloc[:0].copy()
    rng = np.random.default_rng(seed)
    counts = df["label"].value_counts().to_dict()
    want = allocate(n, {str(k): int(v) for k, v in counts.items()})
    picked = []
    for label, k in sorted(want.items()):
        idx = np.flatnonzero(df["label"].to_numpy() == label)
        picked.extend(rng.choice(idx, k, replace=False).tolist())
    return df.iloc[sorted(picked)].reset_index(drop=True)


def load_golden(settings: RetrainSettings) -> pd.DataFrame | None:
    """The operator's golden set from ``settings.golden_path`` (CSV/Parquet text,label), or None."""
    if not settings.golden_path:
        return None
    return _normalise(read_labelled(Path(settings.golden_path).expanduser()), "golden")


def assemble_snapshot(
    new_labelled: pd.DataFrame,
    older_labelled: pd.DataFrame | None,
    settings: RetrainSettings,
    seed: int = 0,
    golden: pd.DataFrame | None = None,
    meta: dict[str, Any] | None = None,
    used_holdout: set[str] | frozenset[str] = frozenset(),
) -> Snapshot:
    """Build the snapshot of one retrain.

    ``new_labelled``: feedback since the champion was trained, one row per prediction (the latest
    label), columns ``text``, ``label`` (the true label) and optionally ``id`` (the prediction id: it
    decides evaluation-slice membership), ``ts``, ``predicted_label`` (what the logged model said: the
    baseline when there is no champion). ``older_labelled``: earlier feedback and the champion's own
    training rows. ``golden`` overrides ``settings.golden_path``. ``used_holdout``: prediction ids an
    earlier gate decision already tested on (never a holdout again).
    """
    new = _normalise(new_labelled, "new")
    older = _normalise(older_labelled, "older")
    gold = _normalise(golden, "golden") if golden is not None else load_golden(settings)

    rest, holdout = fresh_slice_split(new, settings.holdout_fraction, used_holdout)
    blocked = set(_text_key(holdout["text"]))
    if gold is not None:
        blocked |= set(_text_key(gold["text"]))
    new_train = rest[~_text_key(rest["text"]).isin(blocked)].reset_index(drop=True)

    # The same prediction may have an older and a newer label: the newer (in ``new``) wins.
    older = older[~older["id"].isin(set(new["id"]))]
    older = older[~_text_key(older["text"]).isin(blocked)].reset_index(drop=True)
    n_replay = min(int(round(settings.replay_ratio * len(new_train))), settings.replay_max, len(older))
    replay = stratified_sample(older, n_replay, seed)

    train = pd.concat([new_train.assign(origin="new"), replay.assign(origin="replay")], ignore_index=True)
    if len(train):
        train = train.iloc[np.random.default_rng(seed).permutation(len(train))].reset_index(drop=True)
    return Snapshot(
        train=train, holdout=holdout, golden=gold, n_new=len(new), n_new_train=len(new_train),
        n_replay=len(replay), n_replay_available=len(older), meta={"seed": seed, **(meta or {})},
    )


# ---- on disk --------------------------------------------------------------------------------------


def _for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if col != "ts" and out[col].dtype == object:  # mixed objects -> str, missing stays missing
            out[col] = out[col].map(lambda v: None if v is None or v != v else str(v))
    return out


def _part_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_snapshot(snapshot: Snapshot, directory: str | Path) -> dict[str, Any]:
    """Write each part as ``<part>.parquet`` plus ``manifest.json``; return the manifest.

    The manifest lists, per part, the row ids, counts per class and the content hash of its
    (text, label) pairs, the file's sha256, and the replay/new counts. ``sha256`` at the top is
    over the parts' file hashes: one value that names this exact snapshot.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Any] = {}
    for name, df in snapshot.parts().items():
        path = directory / f"{name}.parquet"
        _for_parquet(df).to_parquet(path, index=False)
        info = data_manifest(df) if len(df) else {"n_rows": 0, "label_counts": {}, "sha256": None}
        info.update(file=path.name, file_sha256=_part_hash(path), ids=df["id"].astype(str).tolist())
        if name == "train" and "origin" in df.columns:
            info["origin_counts"] = {str(k): int(v) for k, v in df["origin"].value_counts().sort_index().items()}
        parts[name] = info
    if snapshot.unlabelled is not None and len(snapshot.unlabelled):
        path = directory / UNLABELLED_PART
        snapshot.unlabelled[["id", "text"]].astype(str).to_parquet(path, index=False)
        parts["unlabelled"] = {"file": path.name, "file_sha256": _part_hash(path), "n_rows": len(snapshot.unlabelled)}
    top = hashlib.sha256("".join(f"{k}:{v['file_sha256']}\n" for k, v in sorted(parts.items())).encode())
    manifest = {
        "parts": parts,
        "n_new": snapshot.n_new, "n_new_train": snapshot.n_new_train, "n_replay": snapshot.n_replay,
        "n_replay_available": snapshot.n_replay_available, "meta": snapshot.meta,
        "sha256": top.hexdigest(),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return manifest


def read_snapshot(directory: str | Path, verify: bool = True) -> Snapshot:
    """Read a snapshot written by :func:`write_snapshot`; ``verify`` checks every file's sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a snapshot (no {MANIFEST})")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    frames: dict[str, pd.DataFrame] = {}
    for name, info in manifest["parts"].items():
        file = directory / info["file"]
        if verify and _part_hash(file) != info["file_sha256"]:
            raise ValueError(f"snapshot {directory}: {file.name} does not match its manifest hash")
        frames[name] = pd.read_parquet(file)
    return Snapshot(
        train=frames["train"], holdout=frames["holdout"], golden=frames.get("golden"),
        n_new=manifest["n_new"], n_new_train=manifest["n_new_train"], n_replay=manifest["n_replay"],
        n_replay_available=manifest["n_replay_available"], meta=manifest.get("meta", {}),
        unlabelled=frames.get("unlabelled"),
    )


def read_manifest(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
