"""Choosing a backend (``select_backend``, for ``--backend``) and opening a deployable file as a model
(``open_model_file``, for ``moefusion.load``)."""
from __future__ import annotations

import logging
import os

import numpy as np

from ...data.preprocess import DEFAULT_AGC_PERCENTILES, merge_visible, prepare_pair
from ...errors import UserError
from .average import AverageBackend
from .base import BACKENDS, ENGINE_EXTS, Backend
from .onnxruntime_backend import OnnxRuntimeBackend
from .tensorrt_backend import TensorRTBackend, import_cudart, import_tensorrt
from .torch_backend import TorchBackend

log = logging.getLogger("moefusion.runtime")


def _fuse_images(backend: Backend, stream: bool, ir: np.ndarray, vis: np.ndarray, agc_percentiles) -> np.ndarray:
    """One numpy pair through ``backend`` (as ``MoEFusion.fuse``: prepare_pair, infer, merge_visible);
    ``stream``: as the next frame of the backend's stream, else per frame (the stream's state untouched)."""
    ir_u, parts = prepare_pair(ir, vis, agc_percentiles or DEFAULT_AGC_PERCENTILES)
    saved, backend.stream_mode = backend.stream_mode, stream
    try:
        fused, _ = backend.infer(ir_u[None, None], parts.y[None, None].astype(np.float32))
    finally:
        backend.stream_mode = saved
    return merge_visible(fused[0, 0], parts)


class BackendModel:
    """What ``moefusion.load`` returns for an .onnx or an .engine: ``fuse(ir, vis)`` with the same
    conventions as the torch model (output shaped and typed like VIS), plus ``backend``; ``stream()``
    for a stream graph (``moefusion-export --stream``), like the torch model's."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def fuse(self, ir: np.ndarray, vis: np.ndarray, agc_percentiles=None) -> np.ndarray:
        return _fuse_images(self.backend, False, ir, vis, agc_percentiles)

    def stream(self) -> BackendStream:
        """A video stream: ``fuse(ir, vis)`` per frame in order with the temporal state carried (in the
        backend: one stream per loaded model, a second ``stream()`` starts it afresh); ``reset()``."""
        if not self.backend.stream_capable:
            raise UserError(f"{self.backend.path}: no stream mode: {self.backend.stream_unavailable}")
        return BackendStream(self.backend)

    def infer(self, ir_unit: np.ndarray, vis_y: np.ndarray):
        return self.backend.infer(ir_unit, vis_y)

    def describe(self) -> str:
        return self.backend.describe()


class BackendStream:
    """``BackendModel.stream()``: the same ``fuse`` / ``reset`` as the torch ``FusionStream``."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.frames = 0
        backend.reset_stream()

    def reset(self) -> None:
        self.backend.reset_stream()
        self.frames = 0

    def fuse(self, ir: np.ndarray, vis: np.ndarray, agc_percentiles=None) -> np.ndarray:
        out = _fuse_images(self.backend, True, ir, vis, agc_percentiles)
        self.frames += 1
        return out


def open_model_file(path, *, device: str = "auto", providers: list[str] | None = None,
                    plugins: list[str] | None = None, **_ignored) -> BackendModel:
    """An .onnx (ONNX Runtime) or .engine/.plan (TensorRT) as a model with ``fuse``."""
    path = str(path)
    kind = model_kind(path)
    if kind == "onnx":
        return BackendModel(OnnxRuntimeBackend(path, providers=providers, device=device))
    if kind == "engine":
        return BackendModel(TensorRTBackend(path, plugins=plugins))
    raise UserError(f"{path}: not an .onnx or an engine file")


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------

def _cuda_device_count_no_torch() -> int:
    cudart = import_cudart()
    if cudart is None:
        return 0
    try:
        err, n = cudart.cudaGetDeviceCount()
        return n if int(err) == 0 else 0
    except Exception:  # noqa: BLE001 - no driver
        return 0


def model_kind(path: str | None) -> str:
    if path is None:
        return "checkpoint"
    p = path.lower()
    if p.endswith(ENGINE_EXTS):
        return "engine"
    if p.endswith(".onnx"):
        return "onnx"
    return "checkpoint"


def select_backend(name: str, model: str | None = None, *, device: str = "auto", precision: str = "auto",
                   cuda_graphs: bool = True, trt_plugins: list[str] | None = None) -> tuple[Backend, str]:
    """Build the backend; returns it and the reason it was chosen (logged by the caller)."""
    if name not in BACKENDS:
        raise UserError(f"--backend {name}: unknown; use one of {', '.join(BACKENDS)}")
    if model is not None and not os.path.exists(model):
        raise UserError(f"--model {model}: no such file")
    kind = model_kind(model)
    if name == "average":
        if model is not None:
            log.warning("--backend average ignores --model %s", model)
        return AverageBackend(), "--backend average: classical per-pixel average, no model"
    if name == "tensorrt" or (name == "auto" and kind == "engine"):
        if kind != "engine":
            raise UserError("--backend tensorrt needs an engine file (--model X.engine); build one with "
                            "moefusion-export --format engine")
        return TensorRTBackend(model, plugins=trt_plugins), f"{'auto: ' if name == 'auto' else ''}engine file -> tensorrt"
    if name == "onnxruntime" or (name == "auto" and kind == "onnx"):
        if kind != "onnx":
            raise UserError("--backend onnxruntime needs an .onnx (--model X.onnx); export one with "
                            "moefusion-export --format onnx")
        b = OnnxRuntimeBackend(model, device=device)
        return b, f"{'auto: ' if name == 'auto' else ''}.onnx -> onnxruntime with {b.providers[0]}"
    if kind != "checkpoint":
        raise UserError(f"--backend torch needs a checkpoint; --model {model} is an {kind} file: use --backend auto")
    if name == "auto" and model is not None:
        # A deployable sibling beats eager PyTorch on a GPU.
        stem = os.path.splitext(model)[0]
        if device != "cpu" and import_tensorrt() is not None and _cuda_device_count_no_torch() > 0:
            for ext in ENGINE_EXTS:
                if os.path.isfile(stem + ext):
                    return (TensorRTBackend(stem + ext, plugins=trt_plugins),
                            f"auto: found {stem + ext} beside the checkpoint and TensorRT + a GPU -> tensorrt")
    b = TorchBackend(model, device=device, precision=precision, cuda_graphs=cuda_graphs)
    if name == "torch":
        b.load()
        return b, "--backend torch"
    try:
        b.load()
    except (UserError, ImportError, NotImplementedError, AttributeError, ModuleNotFoundError) as e:
        if model is not None:
            raise
        # no silent fallback to averaging: the user asked for the model and would not get it
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--backend auto: the default weights cannot be loaded ({msg}); give --model PATH, or "
                        "--backend average for the classical per-pixel fuser without a model") from None
    why = ("CUDA GPU -> torch " + b.precision + (" + CUDA graphs" if b.want_graphs else "")) if b.device.type == "cuda" \
        else "no CUDA GPU -> torch on CPU (fp32)"
    return b, f"auto: checkpoint ({model or 'default weights'}); {why}"
