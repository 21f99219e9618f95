"""Where the model runs (``model.device``) and the mixed precision used on a GPU.

``auto`` picks the first CUDA device when torch sees one, else the CPU; everything runs on the CPU too.
On CUDA, forward passes run under ``torch.autocast`` (bfloat16 where the GPU supports it, else float16
with a gradient scaler in training); on the CPU they stay float32, which is what CPU kernels are fast at.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


def resolve_device(setting: str = "auto") -> torch.device:
    """The torch device for a ``model.device`` setting; ValueError (one line) if it is not usable here."""
    if not re.fullmatch(DEVICE_PATTERN, setting):
        raise ValueError(f"model.device {setting!r}: use auto, cpu, cuda or cuda:N")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"model.device is {setting} but torch sees no CUDA device (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"model.device is {setting} but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``: None on the CPU (full precision)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA, nothing elsewhere."""
    dtype = amp_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Scales float16 losses so small gradients do not underflow; a no-op scaler otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)
