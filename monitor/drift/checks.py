"""Checks as data: what a drift check is (:class:`CheckSpec`), what it finds (:class:`CheckResult`),
and the list tuneloop runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

CheckKind = Literal["embedding", "categorical", "numeric", "descriptor", "labelled_accuracy", "estimated_accuracy"]


@dataclass(frozen=True)
class CheckSpec:
    """One declared check: which metric, of which kind, over which columns, with which parameters.

    ``kind`` selects the computation; ``params`` tune it (e.g. ``{"dims": 32}`` for the PCA size,
    ``{"descriptor": "oov_share"}`` for a text descriptor, ``{"min_threshold": 0.01}`` for a floor
    under the calibrated threshold).
    """

    name: str
    kind: CheckKind
    columns: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    scope: Literal["input", "output"] = "input"
    """``output``: looks at the model's outputs, so compares only rows of the reference's model version."""


@dataclass(frozen=True)
class CheckResult:
    """What one check found. ``details`` is JSON-safe (no NaN, no numpy types).

    For distances ``drifted`` means ``value > threshold``; for accuracies it means
    ``value < threshold`` (``details["direction"]`` says which).
    """

    metric: str
    value: float
    threshold: float
    drifted: bool
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The result as a plain dict (what the store records and the API returns)."""
        return asdict(self)


DEFAULT_CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("embedding_drift", "embedding", ("embedding",), {"dims": 32, "farthest": 10}),
    CheckSpec("prediction_drift", "categorical", ("label",), {"evidently": True}, scope="output"),
    CheckSpec("confidence_drift", "numeric", ("confidence",), scope="output"),
    CheckSpec("text_length_drift", "descriptor", ("text",), {"descriptor": "text_length"}),
    CheckSpec("oov_rate_drift", "descriptor", ("text",), {"descriptor": "oov_share", "vocab_rows": 20_000}),
    CheckSpec("non_ascii_drift", "descriptor", ("text",), {"descriptor": "non_ascii_share"}),
    CheckSpec("labelled_accuracy", "labelled_accuracy", ("label", "true_label"), scope="output"),
    CheckSpec("estimated_accuracy", "estimated_accuracy", ("confidence", "label", "true_label"), scope="output"),
)
"""The checks tuneloop runs; ``settings.checks`` picks which of them by name."""


class Skip(Exception):
    """A check that cannot run on these windows (missing column, too few rows or labels)."""


# --------------------------------------------------------------------------- runner
