"""What every check computation shares: its inputs and seeded random streams, the calibrated decision,
and the cache of fitted reference sides (fit once per reference, calculate many times)."""

from __future__ import annotations

import hashlib
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tuneloop.monitor.config import DriftSettings
from tuneloop.monitor.drift import stats as ds
from tuneloop.monitor.drift.checks import CheckResult, CheckSpec, Skip


class _ReferenceCache:
    """Reference sides of checks already fitted (samples, projection, time-block null), by reference content.

    Fit once, calculate many: a scheduled check against an unchanged reference only computes the
    current side. Keyed by a fingerprint of the reference rows, so a replaced reference is refitted.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_fit(self, key: tuple[Any, ...], fit: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = fit()
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


REFERENCE_CACHE = _ReferenceCache()


def reference_fingerprint(frame: pd.DataFrame) -> str:
    """Cheap content hash of a reference frame (every column in row order; a few of the embeddings), the cache's key."""
    cols = [c for c in frame.columns if c != "embedding"]
    h = hashlib.sha1(str((len(frame), cols)).encode())
    if cols:
        h.update(pd.util.hash_pandas_object(frame[cols].astype(str), index=False).to_numpy().tobytes())
    if "embedding" in frame.columns and len(frame):
        for i in {0, len(frame) // 2, len(frame) - 1}:
            v = frame["embedding"].iloc[i]
            if isinstance(v, np.ndarray | list | tuple):
                h.update(np.asarray(v, dtype=np.float32).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class CheckContext:
    """Everything one check computation needs."""

    spec: CheckSpec
    ref: pd.DataFrame
    cur: pd.DataFrame
    settings: DriftSettings
    labels: list[str]
    seed: int
    reference_key: str

    def param(self, name: str, default: Any) -> Any:
        return self.spec.params.get(name, default)

    def rng(self, part: str) -> np.random.Generator:
        """One independent, seeded stream per check and purpose: same inputs, same results."""
        return np.random.default_rng([self.seed, zlib.crc32(self.spec.name.encode()), zlib.crc32(part.encode())])

    def need_columns(self) -> None:
        for side, frame in (("reference", self.ref), ("current", self.cur)):
            missing = [c for c in self.spec.columns if c not in frame.columns]
            if missing:
                raise Skip(f"{side} has no column {missing}")

    def plan(self, n_ref: int, n_cur: int) -> ds.SamplePlan:
        try:
            return ds.plan_samples(n_ref, n_cur, self.settings.sample_size, self.rng("plan"))
        except ValueError as e:
            raise Skip(str(e)) from None

    def fitted(
        self, n_ref_rows: int, n_cur_rows: int, fit: Callable[[ds.SamplePlan], Any]
    ) -> tuple[ds.SamplePlan, Any]:
        """The reference side (plan + whatever ``fit`` learns from it), fitted once per reference and sample size."""
        plan = self.plan(n_ref_rows, n_cur_rows)
        key = (self.reference_key, self.spec.name, repr(sorted(self.spec.params.items())), n_ref_rows, plan.n_cur,
               self.settings.sample_size, self.settings.resamples, self.seed)
        return plan, REFERENCE_CACHE.get_or_fit(key, lambda: fit(plan))

    def current_rows(self, n_cur_rows: int) -> np.ndarray:
        return ds.sample_current(n_cur_rows, self.settings.sample_size, self.rng("current"))

    def permutations(self, n_ref: int, n_cur: int) -> np.ndarray:
        """Random splits of the two compared samples; enough of them for a p-value to reach 1 - quantile at all."""
        needed = math.ceil(1.0 / (1.0 - self.settings.quantile) - 1e-9) - 1
        n = max(self.settings.resamples, needed)
        return ds.split_indicators(n_ref + n_cur, n_ref, n, self.rng("permutations"))

    def block_starts(self, n_rows: int, block: int) -> np.ndarray:
        return ds.block_starts(n_rows, block, self.settings.resamples, self.rng("blocks"))

    def blocks(self, n_rows: int, block: int) -> np.ndarray:
        return ds.block_indicators(n_rows, block, self.block_starts(n_rows, block))

    def threshold(self, null: np.ndarray, upper: bool = True) -> float:
        t = ds.calibrated_threshold(null, self.settings.quantile, self.settings.threshold_margin, upper=upper)
        floor = self.spec.params.get("min_threshold")
        return max(t, float(floor)) if floor is not None and upper else t

    def decide(
        self, value: float, permutation_null: np.ndarray, block_null: np.ndarray | None
    ) -> tuple[float, dict[str, Any]]:
        """Threshold of a distance: above both the permutation critical value and the time-block threshold.

        The permutation part bounds false alarms by ``1 - quantile`` when the window is a random
        sample of the reference's distribution (widened by ``threshold_margin``, so in practice
        well below); the time-block part asks the window to differ more
        than a contiguous stretch of the reference differs from the rest (traffic drifts a little
        by itself: topics come in bursts).
        """
        median = float(np.median(permutation_null))
        t_perm = ds.permutation_threshold(permutation_null, 1.0 - self.settings.quantile)
        t_perm += self.settings.threshold_margin * max(t_perm - median, 0.0)  # margin: fewer alarms, still exact
        details: dict[str, Any] = {
            "p_value": ds.exceedance(value, permutation_null),
            "permutations": len(permutation_null),
            "permutation_threshold": t_perm,
            "null_median": median,
        }
        threshold = t_perm
        if block_null is not None:
            t_block = self.threshold(block_null)
            details.update(time_blocks=len(block_null), block_threshold=t_block,
                           block_p_value=ds.exceedance(value, block_null), block_median=float(np.median(block_null)))
            threshold = max(threshold, t_block)
        else:
            details["time_blocks"] = 0  # reference too short for distinct blocks: permutation test only
        floor = self.spec.params.get("min_threshold")
        return (max(threshold, float(floor)) if floor is not None else threshold), details

    def result(self, value: float, threshold: float, drifted: bool, details: dict[str, Any]) -> CheckResult:
        return CheckResult(self.spec.name, float(value), float(threshold), bool(drifted), jsonable(details))


def jsonable(x: Any) -> Any:
    """Plain JSON types only: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [jsonable(v) for v in x]
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, int | str):
        return x
    return str(x)


def sample_sizes(plan: ds.SamplePlan, n_ref_rows: int, n_cur_rows: int) -> dict[str, int]:
    return {
        "n_reference": n_ref_rows,
        "n_current": n_cur_rows,
        "sample_reference": plan.n_ref,
        "sample_current": plan.n_cur,
        "fit_rows": len(plan.fit),
    }


def finite_values(frame: pd.DataFrame, col: str) -> np.ndarray:
    v = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
    return v[np.isfinite(v)]
