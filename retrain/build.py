"""Train a version directory from labelled data in this process (``tuneloop models train``, the demo's v1).

The server's retrains run :mod:`tuneloop.retrain.job` as a child process instead; both write the
same directory: the model, its metrics and its drift reference, renamed into place atomically.
Registering the version is the caller's step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.retrain.reference import REFERENCE_FILE, REFERENCE_MAX_ROWS, build_reference
from tuneloop.retrain.search import search_train
from tuneloop.retrain.selftrain import SelfTraining
from tuneloop.retrain.settings import ModelSettings, SearchSettings
from tuneloop.retrain.trainer import check_labelled, train, validation_split
from tuneloop.retrain.versions import is_complete, new_version_name, validate_version_name, write_version


@dataclass
class TrainedVersion:
    version: str
    path: Path
    parent: str | None
    metrics: dict[str, Any]
    reference_rows: int


def train_version(models_dir: Path, settings: ModelSettings, data: pd.DataFrame,
                  labels: Sequence[str] | None = None, version: str | None = None, from_version: str | None = None,
                  progress: bool = False, log: Callable[[str], None] | None = None,
                  self_training: SelfTraining | None = None, search: SearchSettings | None = None) -> TrainedVersion:
    """Train on labelled ``data`` and write ``models_dir/<version>`` with its ``reference.parquet``.

    From the base with ``labels``, or continuing ``from_version`` (its label map is kept). The
    reference is the new model's predictions and embeddings on its own train and validation rows,
    written inside the version directory before the atomic rename. ``self_training`` adds pseudo-labels
    of unlabelled texts to the training split (:mod:`tuneloop.retrain.selftrain`); ``search`` tries a few
    training configurations and keeps the best on validation (:mod:`tuneloop.retrain.search`).
    """
    say = log or (lambda _msg: None)
    init_from = None
    if from_version is not None:
        validate_version_name(from_version)
        init_from = models_dir / from_version
        if not is_complete(init_from):
            raise FileNotFoundError(f"--from {from_version}: no complete version in {models_dir}")
    elif not labels:
        raise ValueError("labels are required when training from the base")
    version = validate_version_name(version) if version else new_version_name(models_dir)
    if (models_dir / version).exists():
        raise FileExistsError(f"version {version} already exists in {models_dir}")
    data = check_labelled(data)
    kw = {"init_from": init_from, "progress": progress, "self_training": self_training}
    if search is not None:
        result = search_train(data, list(labels) if labels else None, settings, search, log=say, **kw)
    else:
        result = train(data, list(labels) if labels else None, settings, log=say, **kw)
    tr, va = validation_split(data, settings.val_fraction, settings.seed)  # the trainer's own split
    both = pd.concat([tr, va], ignore_index=True)
    say(f"computing reference rows ({min(len(both), REFERENCE_MAX_ROWS)} of {len(both)})")
    reference = build_reference(result.classifier, both, ["train"] * len(tr) + ["val"] * len(va), seed=settings.seed)
    path = write_version(models_dir, version, result.classifier, result.metrics, result.manifest,
                         parent=from_version, extra_files={REFERENCE_FILE: reference})
    say(f"wrote {path}")
    return TrainedVersion(version, path, from_version, result.metrics, len(reference))
