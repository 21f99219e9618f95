"""The embedding check: PCA fitted on reference rows that are not compared, then MMD with an RBF kernel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneloop.monitor.drift import stats as ds
from tuneloop.monitor.drift.checks import CheckResult, Skip
from tuneloop.monitor.drift.context import CheckContext, sample_sizes


def _embedding_rows(values: Sequence[Any], dim: int | None = None) -> tuple[np.ndarray, int]:
    """Positions of rows holding an embedding of the right length (the first one seen sets it) and that length."""
    ok = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if isinstance(v, np.ndarray | list | tuple) and len(v) > 0:
            if dim is None:
                dim = len(v)
            ok[i] = len(v) == dim
    return np.flatnonzero(ok), dim or 0


def _stack(values: Sequence[Any], positions: np.ndarray) -> np.ndarray:
    return np.asarray([values[i] for i in positions], dtype=np.float32).reshape(len(positions), -1)


@dataclass(frozen=True)
class _EmbeddingReference:
    """The fitted reference side of the embedding check."""

    mean: np.ndarray
    axes: np.ndarray
    gamma: float
    ref_z: np.ndarray
    k_ref: np.ndarray
    block_null: np.ndarray | None


def check_embedding(c: CheckContext) -> CheckResult:
    c.need_columns()
    col = c.spec.columns[0]
    ref_vals, cur_vals = c.ref[col].to_numpy(), c.cur[col].to_numpy()
    ref_ok, dim = _embedding_rows(ref_vals)
    cur_ok, _ = _embedding_rows(cur_vals, dim or None)

    def fit(plan: ds.SamplePlan) -> _EmbeddingReference:
        # Projection and bandwidth are learnt from reference rows that are never compared.
        fit_x = _stack(ref_vals, ref_ok[plan.fit])
        if len(fit_x) < 3:
            raise Skip("reference too small to fit the projection")
        mean, axes = ds.pca_basis(fit_x, int(c.param("dims", 32)))
        gamma = ds.median_gamma(ds.project(fit_x, mean, axes), c.rng("bandwidth"))
        ref_z = ds.project(_stack(ref_vals, ref_ok[plan.ref]), mean, axes)
        k_ref = ds.rbf(ref_z, ref_z, gamma)
        block_null = None
        if plan.has_blocks:
            blocks_z = ds.project(_stack(ref_vals, ref_ok[plan.blocks]), mean, axes)
            block_null = ds.mmd2_blocks(ds.mean_offdiagonal(k_ref), ds.rbf(blocks_z, blocks_z, gamma),
                                        ds.rbf(ref_z, blocks_z, gamma), c.block_starts(len(blocks_z), plan.n_cur),
                                        plan.n_cur)
        return _EmbeddingReference(mean, axes, gamma, ref_z, k_ref, block_null)

    plan, f = c.fitted(len(ref_ok), len(cur_ok), fit)
    cur_pos = c.current_rows(len(cur_ok))
    cur_z = ds.project(_stack(cur_vals, cur_ok[cur_pos]), f.mean, f.axes)
    k_cur, k_cross = ds.rbf(cur_z, cur_z, f.gamma), ds.rbf(f.ref_z, cur_z, f.gamma)
    value = ds.mmd2_unbiased(f.k_ref, k_cur, k_cross)
    null = ds.mmd2_null(np.block([[f.k_ref, k_cross], [k_cross.T, k_cur]]), c.permutations(plan.n_ref, len(cur_pos)))
    del k_cur
    threshold, decision = c.decide(value, null, f.block_null)

    # Examples that most explain the difference, over the whole current window: the MMD witness
    # (mean similarity to the current sample minus mean similarity to the reference sample) is
    # highest where the current window has mass the reference lacks; outliers of both score ~0.
    n_anchor = int(c.param("witness_anchors", 500))
    pick = c.rng("witness").permutation(len(cur_pos))[:n_anchor]  # cur_pos is in row order: anchor a random part
    ref_anchor, cur_anchor = f.ref_z[:n_anchor], cur_z[pick]
    anchor_of = np.full(len(cur_ok), -1)
    anchor_of[cur_pos[pick]] = np.arange(len(pick))
    witness = np.empty(len(cur_ok))
    step = 20_000
    for i in range(0, len(cur_ok), step):
        chunk = ds.project(_stack(cur_vals, cur_ok[i : i + step]), f.mean, f.axes)
        own = ds.mean_similarity(chunk, cur_anchor, f.gamma)
        is_anchor = anchor_of[i : i + step] >= 0  # leave out each anchor's similarity to itself (1)
        own[is_anchor] = (own[is_anchor] * len(cur_anchor) - 1.0) / max(len(cur_anchor) - 1, 1)
        witness[i : i + step] = own - ds.mean_similarity(chunk, ref_anchor, f.gamma)
    order = np.argsort(-witness, kind="stable")[: int(c.param("farthest", 10))]
    far_rows = cur_ok[order]
    details: dict[str, Any] = {
        "method": f"pca{f.axes.shape[0]}_mmd_rbf",
        "direction": "above",
        **sample_sizes(plan, len(ref_ok), len(cur_ok)),
        "missing_reference": len(ref_vals) - len(ref_ok),
        "missing_current": len(cur_vals) - len(cur_ok),
        "dims": int(f.axes.shape[0]),
        "gamma": f.gamma,
        **decision,
        "farthest_rows": far_rows,
        "farthest_scores": witness[order],
    }
    if "id" in c.cur.columns:
        details["farthest_ids"] = c.cur["id"].to_numpy()[far_rows]
    return c.result(max(value, 0.0), threshold, value > threshold, details)
