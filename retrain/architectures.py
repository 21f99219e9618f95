"""Which encoder checkpoints can be a base, and what each architecture needs: LoRA targets, pooling, size.

A base is any local Hugging Face encoder directory of a supported family. Everything that differs between
families is read from the checkpoint itself (``config.json``, and a sentence-transformers pooling config if
present) or looked up here by ``model_type``; nothing else in the package names an architecture's modules.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# model_type -> the attention projections LoRA adapts (peft matches module names by suffix).
# Query/key/value as in the LoRA paper; ModernBERT fuses them into one Wqkv projection.
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value"],
    "roberta": ["query", "key", "value"],
    "xlm-roberta": ["query", "key", "value"],
    "camembert": ["query", "key", "value"],
    "distilbert": ["q_lin", "k_lin", "v_lin"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj"],
    "mpnet": ["q", "k", "v"],
    "modernbert": ["Wqkv"],
}
FAMILIES = {  # how the supported model types are named to a person
    "bert": "BERT (incl. MiniLM, BGE, E5)", "distilbert": "DistilBERT", "roberta": "RoBERTa",
    "xlm-roberta": "XLM-R", "camembert": "CamemBERT", "deberta-v2": "DeBERTa-v2/v3", "modernbert": "ModernBERT",
    "mpnet": "MPNet",
}
# Position ids of these families start after the padding index: usable length = max_position_embeddings - offset.
POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet"}
POOLING_MODES = ("mean", "cls", "max")


class UnsupportedBase(ValueError):
    """A base directory that is not a supported encoder; the message is one line naming what was found."""


def supported_text() -> str:
    return "supported encoders: " + ", ".join(f"{FAMILIES[t]} (model_type {t})" for t in LORA_TARGETS)


@dataclass(frozen=True)
class BaseInfo:
    """What the code needs to know about a base checkpoint, read without loading its weights."""

    path: Path
    model_type: str
    hidden_size: int
    pooling: str  # "mean" | "cls" | "max"
    lora_targets: list[str]
    max_positions: int  # usable token positions per text

    @property
    def family(self) -> str:
        return FAMILIES[self.model_type]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UnsupportedBase(f"base model {path.parent}: cannot read {path.name} ({e}); {supported_text()}") \
            from None
    if not isinstance(data, dict):
        raise UnsupportedBase(f"base model {path.parent}: {path.name} is not a JSON object; {supported_text()}")
    return data


def _pooling(path: Path) -> str:
    """The sentence-transformers pooling the checkpoint was trained with (modules.json), else mean pooling."""
    modules = path / "modules.json"
    if not modules.is_file():
        return "mean"
    try:
        entries = json.loads(modules.read_text(encoding="utf-8"))
        folder = next(m["path"] for m in entries if str(m.get("type", "")).endswith(".Pooling"))
        cfg = json.loads((path / folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return "mean"
    for mode in POOLING_MODES:
        if cfg.get(f"pooling_mode_{mode}_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"):
            return mode
    return "mean"


def _decoder_only(model_type: str) -> bool:
    """A family transformers knows only as a causal (left-to-right) language model, e.g. GPT-2 or Llama."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def inspect_base(path: str | os.PathLike[str]) -> BaseInfo:
    """Read ``path``'s config.json; :class:`UnsupportedBase` unless it is an encoder of a supported family."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        found = sorted(p.name for p in path.iterdir())[:6] if path.is_dir() else []
        what = f"files {', '.join(found)}" if found else "an empty directory"
        raise UnsupportedBase(f"base model {path}: no config.json (found {what}), not a Hugging Face model "
                              f"directory; {supported_text()}")
    config = _read_json(config_file)
    model_type = str(config.get("model_type") or "")
    architectures = ", ".join(config.get("architectures") or []) or "no architectures listed"
    if model_type not in LORA_TARGETS:
        if not model_type:
            kind = "a config.json without model_type"
        elif config.get("is_encoder_decoder"):
            kind = f"an encoder-decoder model (model_type {model_type}, {architectures})"
        elif config.get("is_decoder") or _decoder_only(model_type):
            kind = f"a decoder-only model (model_type {model_type}, {architectures})"
        else:
            kind = f"an unsupported architecture (model_type {model_type}, {architectures})"
        raise UnsupportedBase(f"base model {path}: found {kind}; {supported_text()}")
    hidden = config.get("hidden_size", config.get("dim"))  # DistilBERT calls it dim
    if not isinstance(hidden, int) or hidden < 1:
        raise UnsupportedBase(f"base model {path}: config.json of model_type {model_type} has no hidden size")
    positions = int(config.get("max_position_embeddings") or 512)
    if model_type in POSITION_OFFSET_TYPES:
        positions -= int(config.get("pad_token_id") or 0) + 1
    return BaseInfo(path, model_type, hidden, _pooling(path), list(LORA_TARGETS[model_type]), positions)


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Sentence vector from token vectors: mean over real tokens (sentence-transformers' default), the
    first token ("cls") or the element-wise max over real tokens."""
    import torch

    if mode == "cls":
        return last_hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    if mode == "max":
        return last_hidden.masked_fill(mask == 0, torch.finfo(last_hidden.dtype).min).amax(1)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def accepted_inputs(model: torch.nn.Module) -> frozenset[str]:
    """Names the encoder's forward takes: DistilBERT, MPNet and ModernBERT take no token_type_ids."""
    import inspect

    forward = getattr(model, "get_base_model", lambda: model)().forward
    return frozenset(inspect.signature(forward).parameters)
