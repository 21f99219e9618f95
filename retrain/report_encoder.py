"""The encoder the data-quality report embeds with: the frozen base with int8 weights.

The report encodes every row of an upload once, and on a CPU that pass is most of its time. Dynamic
int8 quantisation of the encoder's linear layers (per output channel) needs about 2.3x less CPU for
short texts, and the report only compares its embeddings with each other: the label check and the
near-duplicate search keep their precision and recall (measured in bench/label_noise.py). Serving
and training keep the full-precision encoder.

Embeddings of the two variants differ (cosine about 0.97), so a cache of embeddings must name the
variant: :func:`report_encoder_key`.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from tuneloop.retrain.encoder import BASE_PACKAGE, Encoder

VARIANT = "int8-per-channel"
"""Names the report's encoder variant in cache keys."""

_loaded: dict[tuple[str, int], Encoder] = {}
_lock = threading.Lock()


def quantise(encoder: Encoder) -> Encoder:
    """``encoder`` with its linear layers replaced by dynamically quantised int8 ones, in place."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # the eager-mode API warns that it moves to torchao; it still works
        warnings.simplefilter("ignore")
        quantize_dynamic(encoder.model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)
    return encoder


def report_encoder_key(base: str | os.PathLike[str], max_length: int) -> str:
    """The cache key of embeddings made by :func:`report_encoder` (base, max length, variant)."""
    return f"{base}|{max_length}|{VARIANT}"


class ReportEncoder:
    """One quantised encoder per (base, max_length) in the process, loaded on first use; calls are serialised
    (a fast tokenizer must not be used from two threads at once)."""

    def __init__(self, base: str | os.PathLike[str] = BASE_PACKAGE, max_length: int = 128) -> None:
        self.base, self.max_length = str(base), int(max_length)
        self.key = report_encoder_key(self.base, self.max_length)

    def load(self) -> Encoder:
        """The quantised encoder (loaded on the first call): FileNotFoundError or UnsupportedBase for a bad base."""
        with _lock:
            key = (self.base, self.max_length)
            if key not in _loaded:
                _loaded[key] = quantise(Encoder(self.base, self.max_length))
            return _loaded[key]

    @property
    def tokenizer(self):  # type: ignore[no-untyped-def]
        return self.load().tokenizer

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        encoder = self.load()
        with _lock:
            return encoder.encode(list(texts), batch_size=batch_size)
