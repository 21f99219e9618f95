"""Export a version as a standard Hugging Face sequence-classification directory.

The result loads with ``transformers.pipeline("text-classification", model=DEST)`` (no custom code):
the LoRA adapter is merged into the base weights (``merge_and_unload``) and the architecture's own
``...ForSequenceClassification`` head carries tuneloop's linear head, with ``id2label``/``label2id``
and the tokenizer beside it.

Those standard heads read the first token, while tuneloop's head reads the mean of all token
vectors. For mean-pooled bases the export therefore appends one transformer layer that computes that
mean exactly in the first position: its attention has zero query/key weights (uniform attention over
the real tokens, padding masked) and identity values; its output projection writes the head's logits
into a subspace orthogonal to a large fixed offset, so that the layer norms (which cannot be switched
off) only divide by a constant, and the feed-forward block is zero. The head then reads the logits
back through its dense layer (a tanh head works in its linear range). ModernBERT has a mean-pooling
head of its own and needs no extra layer. The exported model is checked against the version on
sample texts; the remaining difference (float rounding, ~1e-5 in probability) is reported.

What a plain classifier cannot reproduce: a version that blends a TF-IDF model into its
probabilities (``blend_tfidf`` > 0) serves that blend, while the export holds the encoder
classifier alone (its labels agree with ``/v1/predict`` only when the blend weight is 0); and texts
longer than ``max_length`` tokens, which serving cuts head+tail, are cut at the end by the pipeline
(``truncation=True``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.retrain.architectures import pool
from tuneloop.retrain.versions import load_version, read_version_info

EXPORT_INFO = "tuneloop_export.json"
FALLBACK_TEXTS = ["a great day", "this is terrible", "the meeting is at noon", "i love it", "not good at all",
                  "the report arrives tomorrow", "what an amazing film", "worst service ever", "okay", "fine thanks"]
PAYLOAD_SHARE = 0.01  # payload norm / offset norm in the extra layer: the layer norm's divisor moves by <= 5e-5
CONTAMINATION = 1e-6  # the residual first-token vector's share of the payload after scaling
TANH_RANGE = 1e-3  # largest tanh argument in a tanh head: tanh(x) = x within x^2/3


class ExportError(ValueError):
    """A version that cannot be exported as asked (one line)."""


@dataclass
class ExportReport:
    path: str
    version: str
    model_type: str
    labels: list[str]
    blend_tfidf: float
    extra_layer: bool
    checked_texts: int
    label_agreement: float  # share of the checked texts with the same label as the encoder classifier
    max_prob_diff: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# model_type -> (module path of the layer list, names in one layer: value, attention output, layer norms,
# the standard head's dense layer and output layer)
_LAYOUT = {
    "bert": ("encoder.layer", "attention.self.value", "attention.output.dense",
             ("attention.output.LayerNorm", "output.LayerNorm"), "bert.pooler.dense", "classifier"),
    "deberta-v2": ("encoder.layer", "attention.self.value_proj", "attention.output.dense",
                   ("attention.output.LayerNorm", "output.LayerNorm"), "pooler.dense", "classifier"),
    "distilbert": ("transformer.layer", "attention.v_lin", "attention.out_lin",
                   ("sa_layer_norm", "output_layer_norm"), "pre_classifier", "classifier"),
    "modernbert": ("", "", "", ("head.norm",), "head.dense", "classifier"),
}
for _t in ("roberta", "xlm-roberta", "camembert"):
    _LAYOUT[_t] = ("encoder.layer", "attention.self.value", "attention.output.dense",
                   ("attention.output.LayerNorm", "output.LayerNorm"), "classifier.dense", "classifier.out_proj")


def _basis(d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An offset w (mean 0, rms 1) and k orthonormal directions orthogonal to it and to the all-ones vector."""
    w = torch.ones(d)
    w[1::2] = -1.0
    if d % 2:
        w[-1] = 0.0
        w = w * (d / (d - 1)) ** 0.5
    gen = torch.Generator().manual_seed(0)
    m = torch.cat([torch.ones(d, 1) / d**0.5, w[:, None] / d**0.5, torch.randn(d, k, generator=gen)], dim=1)
    q, _ = torch.linalg.qr(m.double())
    return w, q[:, 2 : 2 + k].float()


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name)


def _set(linear: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        linear.weight.zero_()
        rows, cols = weight.shape
        linear.weight[:rows, :cols] = weight
        if linear.bias is not None:
            linear.bias.zero_()
            if bias is not None:
                linear.bias[: bias.shape[0]] = bias


def _texts(version_dir: Path) -> list[str]:
    import pandas as pd

    ref = version_dir / "reference.parquet"
    if ref.is_file():
        texts = pd.read_parquet(ref, columns=["text"])["text"].astype(str).tolist()
        if texts:
            return texts[:500]
    return list(FALLBACK_TEXTS)


def export_hf(version_dir: str | os.PathLike[str], dest: str | os.PathLike[str],
              texts: list[str] | None = None) -> ExportReport:
    """Write ``version_dir`` as a standard sequence-classification directory at ``dest`` (must not exist)."""
    from transformers import AutoModelForSequenceClassification

    version_dir, dest = Path(version_dir), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ExportError(f"{dest} exists and is not empty: choose a new directory")
    info_json = read_version_info(version_dir)
    clf = load_version(version_dir, threads=0, trainable=True, device="cpu")
    model_type = clf.info.model_type if clf.info else "bert"
    if model_type not in _LAYOUT or clf.pooling == "max":
        raise ExportError(f"version {version_dir.name}: a {model_type} base with {clf.pooling} pooling has no "
                          "standard sequence-classification head that reproduces it; exportable: mean or CLS "
                          f"pooling on {', '.join(sorted(_LAYOUT))}")
    texts = texts or _texts(version_dir)
    encoder = clf.encoder.merge_and_unload().eval()
    head_w, head_b = clf.head.weight.detach().float(), clf.head.bias.detach().float()
    k, d = head_w.shape
    layers_path, value, attn_out, norms, dense, out = _LAYOUT[model_type]
    extra = clf.pooling == "mean" and model_type != "modernbert"

    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    config.num_labels = k
    config.id2label = dict(enumerate(clf.labels))
    config.label2id = {label: i for i, label in enumerate(clf.labels)}
    config.architectures = None
    layer_key = "n_layers" if model_type == "distilbert" else "num_hidden_layers"
    n_layers = getattr(config, layer_key)
    if extra:
        setattr(config, layer_key, n_layers + 1)
    if model_type == "deberta-v2":
        config.pooler_hidden_act, config.pooler_hidden_size = "linear", d
    if model_type == "modernbert":
        config.classifier_pooling = "mean" if clf.pooling == "mean" else "cls"
        config.classifier_activation, config.classifier_bias = "linear", True
    model = AutoModelForSequenceClassification.from_config(config).eval()
    base = getattr(model, model.base_model_prefix)
    missing, _unused = base.load_state_dict(encoder.state_dict(), strict=False)
    new_layer = f"{layers_path}.{n_layers}."
    unexpected_missing = [m for m in missing if not (extra and m.startswith(new_layer)) and "pooler" not in m]
    if unexpected_missing:
        raise ExportError(f"version {version_dir.name}: the standard {model_type} model lacks weights the base has "
                          f"({unexpected_missing[:3]})")

    with torch.inference_mode():
        enc = clf.tokenize(texts)
        hidden = encoder(**enc).last_hidden_state
        pooled = pool(hidden, enc["attention_mask"], clf.pooling).float()
        logits_max = float((pooled @ head_w.T).norm(dim=1).max()) or 1.0
        first_max = float(hidden[:, 0].norm(dim=1).max())
    w, basis = _basis(d, k)
    with torch.no_grad():
        if extra or model_type == "modernbert":
            # payload p = r * basis @ (W m), offset w: |p| <= PAYLOAD_SHARE * |w|
            r = PAYLOAD_SHARE * d**0.5 / logits_max
            readout = basis.T / r  # k x d: logits (without bias) = readout @ (first-token vector)
        else:  # CLS pooling: the first-token vector is what the head reads
            readout = head_w
        if extra:
            layer = _module(base, f"{layers_path}.{n_layers}")
            for p in layer.parameters():
                p.zero_()
            _set(_module(layer, value), torch.eye(d), None)
            scale = first_max / (CONTAMINATION * PAYLOAD_SHARE * d**0.5)  # the residual is noise at this scale
            _set(_module(layer, attn_out), scale * r * basis @ head_w, scale * w)
            for name in norms:
                _module(layer, name).weight.fill_(1.0)
        if model_type == "modernbert":
            _set(_module(model, dense), r * basis @ head_w, w)
            _module(model, norms[0]).weight.fill_(1.0)
            if getattr(_module(model, norms[0]), "bias", None) is not None:
                _module(model, norms[0]).bias.zero_()
        _map_head(model, model_type, dense, out, readout, head_b, logits_max)

    report = _check(clf, model, texts, version_dir.name, model_type, extra, dest,
                    float(info_json["training_config"].get("settings", {}).get("blend_tfidf", 0.0)))
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer = clf.tokenizer
    tokenizer.model_max_length = clf.settings.max_length  # pipeline(truncation=True) cuts where serving does
    tokenizer.save_pretrained(dest)
    (dest / EXPORT_INFO).write_text(json.dumps({**report.as_json(), "base": info_json["training_config"]["base"]},
                                               indent=2), encoding="utf-8")
    return report


def _map_head(model: torch.nn.Module, model_type: str, dense: str, out: str, readout: torch.Tensor,
              bias: torch.Tensor, logits_max: float) -> None:
    """Put ``logits = readout @ first_token + bias`` into the standard head (dense -> activation -> output)."""
    k = readout.shape[0]
    eye = torch.eye(k)
    if model_type == "modernbert":  # dense already holds the payload; the norm output is read back directly
        _set(_module(model, out), readout, bias)
        return
    if model_type == "deberta-v2":  # linear activation: exact
        _set(_module(model, dense), readout, None)
        _set(_module(model, out), eye, bias)
    elif model_type == "distilbert":  # ReLU: shift into the positive range and back
        shift = 10 * logits_max
        _set(_module(model, dense), readout, torch.full((k,), shift))
        _set(_module(model, out), eye, bias - shift)
    else:  # tanh: stay in its linear range
        eps = TANH_RANGE / logits_max
        _set(_module(model, dense), eps * readout, None)
        _set(_module(model, out), eye / eps, bias)


def _check(clf: Any, model: torch.nn.Module, texts: list[str], version: str, model_type: str, extra: bool,
           dest: Path, blend: float) -> ExportReport:
    """Compare the exported model with the version's encoder classifier on ``texts``."""
    with torch.inference_mode():
        enc = clf.tokenize(texts)
        mine = torch.softmax(clf(**enc)[0], dim=-1).numpy()
        theirs = torch.softmax(model(**enc).logits.float(), dim=-1).numpy()
    agreement = float(np.mean(mine.argmax(1) == theirs.argmax(1)))
    return ExportReport(str(dest), version, model_type, list(clf.labels), blend, extra, len(texts), agreement,
                        float(np.abs(mine - theirs).max()))
