"""ONNX exports cached per checkpoint, for ``run_pipeline --backend auto`` on a CPU.

ONNX Runtime runs the bundled model several times faster than eager PyTorch on a CPU
(docs/benchmark.md), so ``--backend auto`` without a CUDA GPU exports the checkpoint once, as a stream
graph (``moefusion-export --stream``: it serves the stream mode and, with a zero state, per-frame
fusion), and reuses the file on every later start. The file name holds a hash of the checkpoint's
bytes and one of the code that defines the graph (moefusion/model and moefusion/export): retrained
weights or a changed model or exporter (a new stream state, say) give a new export, never a stale
one. Written to a temporary name and renamed, so an interrupted export leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from .._version import __version__
from ..errors import UserError

log = logging.getLogger("moefusion.export")
CACHE_DIR = Path(os.environ.get("MOEFUSION_CACHE", Path.home() / ".cache" / "moefusion")) / "onnx"
# Dynamic sizes of the cached graph: from a thumbnail to 1080p, either orientation.
DYNAMIC = ((16, 16), (1920, 1920))


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


GRAPH_CODE = tuple(Path(__file__).resolve().parents[1] / d for d in ("model", "export"))


def _code_hash() -> str:
    """Of the sources that decide what an export holds (the version string is not bumped per change)."""
    h = hashlib.sha256(__version__.encode())
    for folder in GRAPH_CODE:
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:8]


def cached_path(checkpoint: str | os.PathLike, cache_dir: Path | None = None) -> Path:
    checkpoint = Path(checkpoint)
    return (cache_dir or CACHE_DIR) / f"{checkpoint.stem}-{_file_hash(checkpoint)}-{_code_hash()}-stream.onnx"


def cached_stream_onnx(checkpoint: str | os.PathLike, cache_dir: Path | None = None) -> Path:
    """The ONNX stream graph of ``checkpoint`` (a .pt), exported on first use and cached."""
    from .api import run_export  # torch and the exporter: only when an export is needed

    path = cached_path(checkpoint, cache_dir)
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the ONNX cache folder {path.parent} ({e.strerror}); set MOEFUSION_CACHE "
                        "to a writable folder, or choose --backend torch") from None
    log.info("exporting %s to ONNX once (cached as %s; later starts reuse it)", checkpoint, path)
    run_export({"weights": str(checkpoint), "output": str(path), "stream": True, "dynamic": DYNAMIC})
    return path
