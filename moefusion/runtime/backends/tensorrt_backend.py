"""``tensorrt``: a serialized TensorRT engine and its plugin library; device memory through
cuda-python; no torch on this path."""
from __future__ import annotations

import ctypes
import json
import logging
import os

import numpy as np

from ...errors import UserError
from ...kernels import plugins as plugin_files
from .base import Backend, _check_inputs
from .stream_state import StreamStates, stream_spec_from_metadata

log = logging.getLogger("moefusion.runtime")


def import_tensorrt():
    """``tensorrt`` (JetPack / x86 TensorRT 10), else ``tensorrt_rtx`` (same API for what we use)."""
    try:
        import tensorrt as trt  # noqa: F401

        return trt
    except ImportError:
        pass
    try:
        import tensorrt_rtx as trt  # noqa: F401

        return trt
    except ImportError:
        return None


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def _cuda_check(res, what: str):
    err = res[0] if isinstance(res, tuple) else res
    if int(err) != 0:
        raise RuntimeError(f"CUDA error in {what}: {err}")
    return res[1] if isinstance(res, tuple) and len(res) == 2 else (res[1:] if isinstance(res, tuple) else None)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class TensorRTBackend(Backend):
    """A serialized TensorRT engine with tensors ``ir``, ``vis`` -> ``fused`` (and ``attention``)."""

    name = "tensorrt"

    def __init__(self, path: str, *, plugins: list[str] | None = None):
        trt = import_tensorrt()
        if trt is None:
            raise UserError(f"--model {path} is a TensorRT engine but TensorRT is not installed: on Jetson it comes with "
                            "JetPack (python3-libnvinfer); on x86 pip install tensorrt; or use the .onnx with --backend onnxruntime")
        cudart = import_cudart()
        if cudart is None:
            raise UserError("--backend tensorrt needs cuda-python for device memory: pip install cuda-python")
        if not os.path.isfile(path):
            raise UserError(f"--model {path}: no such file")
        self.trt, self.cudart, self.path = trt, cudart, path
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.plugins = plugin_files.plugin_libraries(path, plugins)
        explicit = bool(self.plugins)
        if not self.plugins and plugin_files.default_plugin_library():
            self.plugins = [plugin_files.default_plugin_library()]
        # once per process (moefusion.kernels.plugins): a second engine, or an export earlier in
        # this process, must not load the library again (the registry refuses duplicates)
        for lib in list(self.plugins):
            try:
                plugin_files.load_plugin_library(trt, lib, logger=self.logger, flag="--trt-plugins")
            except UserError as e:
                if explicit:
                    raise
                log.warning("tensorrt: not loading %s (%s)", lib, e)
                self.plugins.remove(lib)
        self.runtime = trt.Runtime(self.logger)
        with open(path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise UserError(f"--model {path}: TensorRT cannot deserialize this engine (built for another TensorRT "
                            "version or GPU, or its plugin library is missing: --trt-plugins); rebuild it on this "
                            "device with moefusion-export --format engine")
        self.context = self.engine.create_execution_context()
        self.stream = _cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if {n for n in self.inputs if not n.startswith("state_")} != {"ir", "vis"} or "fused" not in self.outputs:
            raise UserError(f"--model {path}: expected engine inputs ir, vis and output fused; it has {self.inputs} -> {self.outputs}")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        # A stream engine (moefusion-export --stream): the state's shapes come from the ONNX metadata in the
        # sidecar (<engine>.json); the state makes a host round trip per frame (simple, not the fastest).
        side = _read_json(path + ".json")
        spec, why = stream_spec_from_metadata(side.get("onnx_metadata") or {}, self.inputs)
        if spec is None and len(self.inputs) > 2:
            raise UserError(f"--model {path}: {why} (its sidecar {path}.json is missing or has no stream metadata)")
        self.states = StreamStates(spec, self.dtypes) if spec else None
        self.stream_capable, self.stream_unavailable = spec is not None, why
        hw = tuple(self.engine.get_tensor_shape("ir"))[-2:]
        if -1 in hw:  # dynamic: the first optimisation profile's range
            lo, _, hi = self.engine.get_tensor_profile_shape("ir", 0)
            self.size_range = (tuple(lo)[-2:], tuple(hi)[-2:])
        else:
            self.size_range = (hw, hw)
        self._shape = None
        self._dev: dict = {}
        self._host: dict = {}

    def reset_stream(self) -> None:
        if getattr(self, "states", None) is not None:
            self.states.reset()

    def _alloc(self, shape):
        cudart = self.cudart
        self._free()
        state_shapes = self.states.spec.shapes(shape[0], shape[2], shape[3]) if self.states else {}
        for n in self.inputs:
            self.context.set_input_shape(n, state_shapes.get(n, shape))
        for n in self.inputs + self.outputs:
            shp = tuple(self.context.get_tensor_shape(n))
            nbytes = int(np.prod(shp)) * self.dtypes[n].itemsize
            ptr = _cuda_check(cudart.cudaMalloc(nbytes), "cudaMalloc")
            hptr = _cuda_check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            buf = (ctypes.c_byte * nbytes).from_address(int(hptr))
            host = np.frombuffer(buf, dtype=self.dtypes[n]).reshape(shp)
            self._dev[n] = (int(ptr), nbytes)
            self._host[n] = (int(hptr), host)
            self.context.set_tensor_address(n, int(ptr))
        self._shape = shape

    def _free(self):
        for ptr, _ in self._dev.values():
            self.cudart.cudaFree(ptr)
        for hptr, _ in self._host.values():
            self.cudart.cudaFreeHost(hptr)
        self._dev, self._host = {}, {}

    def infer(self, ir_unit, vis_y):
        _check_inputs(ir_unit, vis_y)
        self.check_size(*ir_unit.shape[-2:])
        cudart = self.cudart
        if self._shape != tuple(ir_unit.shape):
            self._alloc(tuple(ir_unit.shape))
        H2D = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        D2H = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        frames = [("ir", ir_unit), ("vis", vis_y)]
        if self.states is not None:
            b, _, h, w = ir_unit.shape
            frames += list(self.states.feeds(b, h, w, self.stream_mode).items())
        for n, x in frames:
            hptr, host = self._host[n]
            host[...] = x
            ptr, nbytes = self._dev[n]
            _cuda_check(cudart.cudaMemcpyAsync(ptr, hptr, nbytes, H2D, self.stream), "cudaMemcpyAsync")
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path}")
        for n in self.outputs:
            hptr, _ = self._host[n]
            ptr, nbytes = self._dev[n]
            _cuda_check(cudart.cudaMemcpyAsync(hptr, ptr, nbytes, D2H, self.stream), "cudaMemcpyAsync")
        _cuda_check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        fused = self._host["fused"][1].astype(np.float32, copy=True)
        att = self._host["attention"][1].astype(np.float32, copy=True) if "attention" in self._host else None
        if self.states is not None and self.stream_mode:  # copies: the host buffers are overwritten next frame
            self.states.update({n: self._host[n][1].copy() for n in self.states.spec.outputs}, True)
        return fused, att

    def describe(self):
        return f"tensorrt ({self.trt.__name__} {self.trt.__version__}; {self.path}; plugins: {', '.join(self.plugins) or 'none'})"

    def close(self):
        self._free()
