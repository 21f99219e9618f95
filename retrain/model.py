"""tuneloop's own classifier: base encoder + LoRA adapter + linear head.

One forward pass yields the label, the class probabilities and the pooled sentence embedding, so
serving gets what drift detection needs without a second model call. The embedding is defined
exactly as in :class:`tuneloop.retrain.encoder.Encoder` (L2-normalised mean pooling of the last
hidden state), so embeddings logged by either are comparable.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tuneloop.retrain.baselines import SparseModel
from tuneloop.retrain.encoder import mean_pool, resolve_base, tokenize
from tuneloop.retrain.settings import ModelSettings

LORA_TARGETS = ["query", "key", "value"]
ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"
LABELS_FILE = "labels.json"


@dataclass
class Predictions:
    """What one forward pass over a list of texts gives, row-aligned with the input."""

    labels: list[str]
    probs: np.ndarray  # float32 [n, k], columns in the classifier's label order
    embeddings: np.ndarray  # float32 [n, hidden], L2-normalised
    confidence: np.ndarray  # float32 [n], the max probability

    def __len__(self) -> int:
        return len(self.labels)


def set_threads(threads: int) -> None:
    """Apply the ``model.threads`` setting (0 leaves torch's default: all cores)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft still calls a transformers method that transformers 5 marks deprecated: not our users' concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _load_base(base: str | os.PathLike[str], lora: bool):  # type: ignore[no-untyped-def]
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-load bars are noise in service and job logs
    path = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)
    if lora:
        encoder.requires_grad_(False)
    return path, tokenizer, encoder


class TextClassifier(nn.Module):
    """Sequence classifier over a BERT-like encoder; build with :meth:`from_base` or load a version.

    Attributes: ``labels`` (index -> label), ``settings`` (the ModelSettings it was built with),
    ``base`` (the base as configured, a package name or a directory), ``dim`` (embedding size).
    """

    def __init__(self, encoder: nn.Module, tokenizer, labels: list[str], settings: ModelSettings,  # type: ignore[no-untyped-def]
                 base: str, lora: bool = True) -> None:
        super().__init__()
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"a classifier needs at least two distinct labels, got {labels!r}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.settings = settings
        self.base = str(base)
        self.lora = lora
        self.dim = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(float(getattr(encoder.config, "hidden_dropout_prob", 0.1)))
        self.head = nn.Linear(self.dim, len(labels))
        self.sparse: SparseModel | None = None  # TF-IDF + LR blended into predict() (settings.blend_tfidf)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_base(cls, base: str | os.PathLike[str], labels: list[str], settings: ModelSettings,
                  lora: bool = True) -> TextClassifier:
        """A fresh classifier: LoRA (r/alpha/dropout from settings) on query/key/value, new head.

        ``lora=False`` trains every encoder weight instead (full fine-tuning, for comparison only:
        such a model cannot be written as a version).
        """
        from peft import LoraConfig, get_peft_model

        set_threads(settings.threads)
        torch.manual_seed(settings.seed)
        _, tokenizer, encoder = _load_base(base, lora)
        if lora:
            config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                lora_dropout=settings.lora_dropout, target_modules=LORA_TARGETS, bias="none")
            with _quiet_peft():
                encoder = get_peft_model(encoder, config)
        return cls(encoder, tokenizer, labels, settings, str(base), lora=lora).eval()

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], base: str | os.PathLike[str], settings: ModelSettings,
                 trainable: bool = False) -> TextClassifier:
        """Load the adapter, head and label map saved by :meth:`save` on top of ``base``.

        Unless ``trainable``, the adapter is merged into the base weights (same outputs, ~10% faster
        inference); such a model can still be saved, but must not be trained further.
        """
        from peft import PeftModel
        from safetensors.torch import load_file

        path = Path(path)
        set_threads(settings.threads)
        labels = json.loads((path / LABELS_FILE).read_text(encoding="utf-8"))["labels"]
        _, tokenizer, encoder = _load_base(base, lora=True)
        with _quiet_peft():
            encoder = PeftModel.from_pretrained(encoder, path / ADAPTER_DIR, is_trainable=trainable)
            if not trainable:
                encoder.merge_adapter()
        clf = cls(encoder, tokenizer, labels, settings, str(base))
        clf.head.load_state_dict(load_file(path / HEAD_FILE))
        clf.sparse = SparseModel.load(path)
        return clf.eval()

    @classmethod
    def from_version(cls, path: str | os.PathLike[str], threads: int = 0) -> TextClassifier:
        """Load a version directory (see :func:`tuneloop.retrain.versions.load_version`)."""
        from tuneloop.retrain.versions import load_version

        return load_version(path, threads=threads)

    def save(self, path: str | os.PathLike[str]) -> list[Path]:
        """Write adapter, head and label map into ``path``; return the files written."""
        from safetensors.torch import save_file

        if not self.lora:
            raise ValueError("only LoRA classifiers can be saved (full fine-tuning is for comparison only)")
        path = Path(path)
        self.encoder.save_pretrained(path / ADAPTER_DIR)
        head = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(head, path / HEAD_FILE)
        (path / LABELS_FILE).write_text(json.dumps({"labels": self.labels}, indent=2), encoding="utf-8")
        if self.sparse is not None:
            self.sparse.save(path)
        return [p for p in path.rglob("*") if p.is_file()]

    # ---- forward ------------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Pad to the longest text in this batch; longer texts cut as ``settings.truncation`` says."""
        return tokenize(self.tokenizer, texts, self.settings.max_length, self.settings.truncation)

    def max_tokens(self) -> int:
        """The base model's own limit on tokens per text."""
        limits = [int(getattr(self.encoder.config, "max_position_embeddings", 512)),
                  int(getattr(self.tokenizer, "model_max_length", 512) or 512)]
        return min(limits)

    def warm_start_head(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Set the head to given weights (e.g. a logistic fit on frozen pooled embeddings)."""
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(coef, dtype=self.head.weight.dtype))
            self.head.bias.copy_(torch.as_tensor(intercept, dtype=self.head.bias.dtype))

    @torch.inference_mode()
    def base_pooled(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Mean-pooled (not normalised) vectors of the base encoder with any LoRA adapter switched off."""
        was_training = self.training
        self.eval()
        off = self.encoder.disable_adapter() if self.lora and hasattr(self.encoder, "disable_adapter") \
            else contextlib.nullcontext()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        try:
            with off:
                for start in range(0, len(texts), batch_size):
                    idx = order[start : start + batch_size]
                    enc = self.tokenize([texts[i] for i in idx])
                    hidden = self.encoder(**enc).last_hidden_state
                    out[idx] = mean_pool(hidden, enc["attention_mask"]).float().numpy()
        finally:
            self.train(was_training)
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits [n,k], L2-normalised mean-pooled embedding [n,hidden]).

        The head reads the pooled vector before normalisation (its norm carries signal too).
        """
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        embedding = nn.functional.normalize(pooled, dim=-1)
        return self.head(self.dropout(pooled)), embedding

    def predict(self, texts: list[str], batch_size: int | None = None) -> Predictions:
        """Labels, probabilities, confidence and embeddings for ``texts`` (any number; batched by length)."""
        n = len(texts)
        batch_size = batch_size or self.settings.serve_max_batch
        probs = np.empty((n, len(self.labels)), dtype=np.float32)
        emb = np.empty((n, self.dim), dtype=np.float32)
        order = sorted(range(n), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    logits, e = self(**self.tokenize([texts[i] for i in idx]))
                    probs[idx] = torch.softmax(logits.float(), dim=-1).numpy()
                    emb[idx] = e.float().numpy()
        finally:
            self.train(was_training)
        blend = self.settings.blend_tfidf
        if self.sparse is not None and blend > 0 and n:
            probs = ((1 - blend) * probs + blend * self.sparse.predict_proba(texts)).astype(np.float32)
        top = probs.argmax(axis=1) if n else np.empty(0, dtype=np.int64)
        return Predictions(
            labels=[self.labels[i] for i in top],
            probs=probs,
            embeddings=emb,
            confidence=probs.max(axis=1) if n else np.empty(0, dtype=np.float32),
        )
