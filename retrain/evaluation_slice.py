"""The evaluation slice: a fixed, uniformly random share of traffic that only random labelling touches.

A prediction belongs to the slice when a hash of its id falls below ``share``: membership is random
with respect to everything the model and the label queue see (text, confidence, time), needs no
storage, and is the same in every process. The label queue never picks slice rows by strategy; it
serves them in random order as its random share of each page. So the labelled slice rows are a
uniform sample of traffic, and the promotion gate's holdout is drawn only from them: queue picks
(chosen because the model is unsure) would make the holdout harder than traffic and biased towards
what the challenger was just trained on.

Changing ``share`` redefines the slice; rows labelled as queue picks before the change may then fall
inside it, so change it rarely (the holdout of the next runs is slightly biased until fresh rows arrive).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

_SCALE = float(2**64)


def _unit_hash(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") / _SCALE


def in_slice(ids: Iterable[object], share: float) -> np.ndarray:
    """Boolean mask: which prediction ids belong to the evaluation slice of this ``share`` (0..1)."""
    return np.array([_unit_hash(str(i)) < share for i in ids], dtype=bool)


def random_order(ids: Iterable[object], seed: int = 0) -> np.ndarray:
    """A seeded random order of ``ids`` that is fixed per id (positions of ``ids``, first to serve first).

    Fixed per id, so the same unlabelled slice rows stay at the front between page loads instead
    of a new sample on every request; independent of content, so any prefix is a uniform sample.
    """
    keys = [_unit_hash(f"{seed}:{i}") for i in ids]
    return np.argsort(np.array(keys, dtype=np.float64), kind="stable")


def random_positions(limit: int, share: float) -> list[int]:
    """Page positions (0-based) that hold random-slice items: ``share`` of the page, spread evenly."""
    return [i for i in range(limit) if int((i + 1) * share + 1e-9) > int(i * share + 1e-9)]
