"""tuneloop's own classifier: base encoder + LoRA adapter + linear head.

One forward pass yields the label, the class probabilities and the pooled sentence embedding, so
serving gets what drift detection needs without a second model call. The embedding is defined
exactly as in :class:`tuneloop.retrain.encoder.Encoder` (the L2-normalised last hidden state, pooled as the
base checkpoint says: mean pooling unless its sentence-transformers config names another), so embeddings
logged by either are comparable. The base may be any supported encoder (see :mod:`.architectures`).
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

from tuneloop.retrain.architectures import BaseInfo, accepted_inputs, pool
from tuneloop.retrain.baselines import SparseModel
from tuneloop.retrain.device import autocast, resolve_device
from tuneloop.retrain.encoder import load_encoder, tokenize
from tuneloop.retrain.settings import ModelSettings

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
    info, tokenizer, encoder = load_encoder(base)
    if lora:
        encoder.requires_grad_(False)
    return info, tokenizer, encoder


class TextClassifier(nn.Module):
    """Sequence classifier over an encoder; build with :meth:`from_base` or load a version.

    Attributes: ``labels`` (index -> label), ``settings`` (the ModelSettings it was built with),
    ``base`` (the base as configured, a package name or a directory), ``dim`` (embedding size, the
    encoder's hidden size), ``info`` (what the base checkpoint says), ``device`` (from ``settings.device``).
    """

    def __init__(self, encoder: nn.Module, tokenizer, labels: list[str], settings: ModelSettings,  # type: ignore[no-untyped-def]
                 base: str, lora: bool = True, info: BaseInfo | None = None) -> None:
        super().__init__()
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"a classifier needs at least two distinct labels, got {labels!r}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.settings = settings
        self.base = str(base)
        self.lora = lora
        self.info = info
        self.pooling = info.pooling if info else "mean"
        self.inputs = accepted_inputs(encoder)
        self.dim = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(float(getattr(encoder.config, "hidden_dropout_prob", 0.1)))
        self.head = nn.Linear(self.dim, len(labels))
        self.device = resolve_device(settings.device)
        self.to(self.device)
        self.sparse: SparseModel | None = None  # TF-IDF + LR blended into predict() (settings.blend_tfidf)
        self.serving_only = False  # the adapter is folded into plain layers (see merge_for_serving)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_base(cls, base: str | os.PathLike[str], labels: list[str], settings: ModelSettings,
                  lora: bool = True) -> TextClassifier:
        """A fresh classifier: LoRA (r/alpha/dropout from settings) on the base's attention projections
        (query/key/value under the architecture's own module names), new head.

        ``lora=False`` trains every encoder weight instead (full fine-tuning, for comparison only:
        such a model cannot be written as a version).
        """
        from peft import LoraConfig, get_peft_model

        set_threads(settings.threads)
        torch.manual_seed(settings.seed)
        info, tokenizer, encoder = _load_base(base, lora)
        if lora:
            config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                lora_dropout=settings.lora_dropout, target_modules=info.lora_targets, bias="none")
            with _quiet_peft():
                encoder = get_peft_model(encoder, config)
        return cls(encoder, tokenizer, labels, settings, str(base), lora=lora, info=info).eval()

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
        info, tokenizer, encoder = _load_base(base, lora=True)
        with _quiet_peft():
            encoder = PeftModel.from_pretrained(encoder, path / ADAPTER_DIR, is_trainable=trainable)
            if not trainable:
                encoder.merge_adapter()
        clf = cls(encoder, tokenizer, labels, settings, str(base), info=info)
        clf.head.load_state_dict(load_file(path / HEAD_FILE, device=str(clf.device)))
        clf.sparse = SparseModel.load(path)
        return clf.eval()

    def merge_for_serving(self) -> TextClassifier:
        """Fold the LoRA adapter into plain encoder layers, in place, and return ``self``.

        The outputs stay the same (up to float rounding), but each forward no longer passes through
        peft's wrapper layers. What needs the adapter apart (saving, training, the base encoder's own
        pooled vectors) is refused afterwards: load the version again for that.
        """
        if self.lora and hasattr(self.encoder, "merge_and_unload"):
            with _quiet_peft(), torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="All adapters are already merged")  # from_dir merged them
                self.encoder = self.encoder.merge_and_unload()
            self.serving_only = True
        return self

    def _refuse_if_serving_only(self, what: str) -> None:
        if self.serving_only:
            raise ValueError(f"cannot {what}: this classifier's adapter is merged into the encoder for serving; "
                             "load the version again")

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
        self._refuse_if_serving_only("save it")
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
        """Pad to the longest text in this batch; longer texts cut as ``settings.truncation`` says.

        Only the inputs the encoder takes, on the model's device."""
        enc = tokenize(self.tokenizer, texts, self.settings.max_length, self.settings.truncation)
        return {k: v.to(self.device) for k, v in enc.items() if k in self.inputs}

    def max_tokens(self) -> int:
        """The base model's own limit on tokens per text."""
        positions = self.info.max_positions if self.info else int(getattr(self.encoder.config,
                                                                                "max_position_embeddings", 512))
        limits = [positions, int(getattr(self.tokenizer, "model_max_length", 512) or 512)]
        return min(limits)

    def warm_start_head(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """Set the head to given weights (e.g. a logistic fit on frozen pooled embeddings)."""
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(coef, dtype=self.head.weight.dtype, device=self.device))
            self.head.bias.copy_(torch.as_tensor(intercept, dtype=self.head.bias.dtype, device=self.device))

    @torch.inference_mode()
    def base_pooled(self, texts: list[str], batch_size: int = 64, adapter: bool = False) -> np.ndarray:
        """Pooled (not normalised) vectors of the base encoder with any LoRA adapter switched off, or
        with ``adapter``, of the encoder as it is (what the head reads)."""
        self._refuse_if_serving_only("pool with the base encoder")
        was_training = self.training
        self.eval()
        off = self.encoder.disable_adapter() if self.lora and not adapter and hasattr(self.encoder, "disable_adapter") \
            else contextlib.nullcontext()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        try:
            with off:
                for start in range(0, len(texts), batch_size):
                    idx = order[start : start + batch_size]
                    enc = self.tokenize([texts[i] for i in idx])
                    with autocast(self.device):
                        hidden = self.encoder(**enc).last_hidden_state
                    out[idx] = pool(hidden, enc["attention_mask"], self.pooling).float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits [n,k], L2-normalised pooled embedding [n,hidden]), both float32.

        The head reads the pooled vector before normalisation (its norm carries signal too). On CUDA
        the pass runs in mixed precision.
        """
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        with autocast(self.device):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            pooled = pool(hidden, attention_mask, self.pooling)
            logits = self.head(self.dropout(pooled))
        embedding = nn.functional.normalize(pooled.float(), dim=-1)
        return logits.float(), embedding

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
                    probs[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
                    emb[idx] = e.float().cpu().numpy()
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
