"""Inference backends behind one small interface.

A backend takes the preprocessed network inputs and returns the fused luminance and the
attention map, all float32 numpy arrays shaped ``[B, 1, H, W]`` in [0, 1]::

    fused_y, attention = backend.infer(ir_unit, vis_y)   # attention may be None

Backends: ``torch`` (a ``moefusion.load()`` model; CUDA: fp16 autocast and CUDA graphs; CPU:
fp32), ``onnxruntime`` (an .onnx with inputs ``ir``, ``vis`` and outputs ``fused``,
``attention``; TensorRT/CUDA execution providers when present, else CPU), ``tensorrt`` (a
serialized engine and its plugin library; device memory through cuda-python; no torch import)
and ``average`` (the classical per-pixel average: no model, any machine).
``select_backend("auto", model_path)`` picks the fastest that can run and says why.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import time

import numpy as np

from ..errors import UserError
from ..export.plugin_registry import load_plugin_library

log = logging.getLogger("moefusion.runtime")

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "average")
ENGINE_EXTS = (".engine", ".plan", ".trt")


class Backend:
    """Interface. Subclasses set ``name`` and implement ``infer``."""

    name = "base"
    path: str | None = None
    # ((min H, min W), (max H, max W)) the model accepts; None: any size. Fixed-size exports: min == max.
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None

    def infer(self, ir_unit: np.ndarray, vis_y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def check_size(self, height: int, width: int) -> None:
        """A UserError naming the model, its sizes and the fix when it cannot take height x width frames."""
        if self.size_range is None:
            return
        (h0, w0), (h1, w1) = self.size_range
        if h0 <= height <= h1 and w0 <= width <= w1:
            return
        built = f"{w0}x{h0}" if (h0, w0) == (h1, w1) else f"{w0}x{h0} to {w1}x{h1}"
        raise UserError(f"{self.path}: this model takes {built} frames, not {width}x{height}; export it again "
                        f"with --imgsz {height} {width} (or --dynamic)")

    def warmup(self, height: int, width: int, iters: int = 2, batch: int = 1) -> float:
        """Run a few times on a (B, 1, H, W) input (builds graphs, autotunes); returns ms per call."""
        rng = np.random.default_rng(0)
        ir = rng.random((batch, 1, height, width), dtype=np.float32)
        vis = rng.random((batch, 1, height, width), dtype=np.float32)
        t0 = time.perf_counter()
        for _ in range(max(1, iters)):
            self.infer(ir, vis)
        return (time.perf_counter() - t0) * 1000 / max(1, iters)

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass


def _check_inputs(ir_unit, vis_y):
    if ir_unit.shape != vis_y.shape or ir_unit.ndim != 4 or ir_unit.shape[1] != 1:
        raise ValueError(f"backend inputs must both be [B,1,H,W]; got {ir_unit.shape} and {vis_y.shape}")


class AverageBackend(Backend):
    """Classical fuser: the per-pixel mean of IR and visible luminance. No attention map."""

    name = "average"

    def infer(self, ir_unit, vis_y):
        _check_inputs(ir_unit, vis_y)
        fused = ir_unit + vis_y
        fused *= 0.5
        return fused, None

    def describe(self):
        return "average (classical per-pixel mean of IR and visible luminance; no model)"


# ----------------------------------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------------------------------

def _find_unit_module(obj):
    """The object exposing ``forward_unit`` (the loaded model, or a wrapped one)."""
    if hasattr(obj, "forward_unit"):
        return obj
    for attr in ("model", "net", "module"):
        inner = getattr(obj, attr, None)
        if inner is not None and hasattr(inner, "forward_unit"):
            return inner
    return None


class TorchBackend(Backend):
    """A ``moefusion.load(path)`` model run by PyTorch. Loaded lazily (first warmup/infer).

    CUDA: fp16 autocast (ops that need fp32, such as softmax and logsumexp, stay in fp32) and one
    CUDA graph per input shape (the sparse dispatch has no host syncs); pinned staging buffers.
    CPU: fp32 eager. ``precision``: auto | fp16 | fp32.
    """

    name = "torch"

    def __init__(self, path: str | None = None, *, model=None, device: str = "auto",
                 precision: str = "auto", cuda_graphs: bool = True):
        self.path = path
        self._model = model
        self.want_device = device
        self.want_precision = precision
        self.want_graphs = cuda_graphs
        self._net = None
        self._graphs: dict = {}
        self.device = None
        self.precision = None
        self.graphs_off_reason = ""
        self.kernels = "PyTorch ops"
        self.source = "in-memory model" if model is not None else (path or "default weights")

    def load(self):
        if self._net is not None:
            return
        try:
            import torch
        except ImportError as e:
            raise UserError(f"--backend torch needs PyTorch ({e}); pip install torch, or use --backend onnxruntime with an .onnx")
        self.torch = torch
        if self.want_device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
        use_cuda = self.want_device in ("auto", "cuda") and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if self._model is None:
            import moefusion

            try:
                self._model = moefusion.load(self.path, device=self.device)
            except UserError:
                raise
            except FileNotFoundError as e:
                raise UserError(f"--model {self.path}: {e}")
            self.source = self.path or "default weights"
        net = _find_unit_module(self._model)
        if net is None:
            raise UserError(f"--model {self.path or '(default weights)'}: the loaded model has no forward_unit(); "
                            "it is not a MoE-Fusion torch model (use an .onnx with --backend onnxruntime, or an .engine)")
        if self.want_precision == "fp16" and not use_cuda:
            raise UserError("--precision fp16 needs a CUDA GPU for the torch backend; use --precision fp32")
        self.precision = ("fp16" if use_cuda else "fp32") if self.want_precision == "auto" else self.want_precision
        if hasattr(net, "to"):
            net = net.to(self.device)
        if hasattr(net, "eval"):
            net.eval()
        self._net = net
        if not use_cuda:
            self.want_graphs = False
            self.graphs_off_reason = "CPU"
        else:
            self.kernels = self._accelerate(net)

    @staticmethod
    def _accelerate(net) -> str:
        """Route the MoE layers through the CUDA kernels when their library is built (same function)."""
        try:
            from ..kernels import fast
            from ..kernels._lib import load_library

            load_library()
        except Exception as e:  # noqa: BLE001 - the PyTorch ops compute the same function
            log.info("torch backend: CUDA kernels not used (%s)", str(e).splitlines()[0])
            return "PyTorch ops (kernels not built: python -m moefusion.kernels.build --install)"
        fast.accelerate(net)
        return "moefusion CUDA kernels"

    def _forward(self, ir, vis):
        torch = self.torch
        with torch.inference_mode():
            if self.precision == "fp16":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self._net.forward_unit(ir, vis)
            else:
                out = self._net.forward_unit(ir, vis)
        if isinstance(out, (tuple, list)):
            fused, att = out[0], (out[1] if len(out) > 1 else None)
        else:
            fused, att = out, None
        return fused.float(), (att.float() if att is not None else None)

    def _graph_for(self, shape):
        torch = self.torch
        g = self._graphs.get(shape)
        if g is not None:
            return g
        pin = {k: torch.empty(shape, dtype=torch.float32, pin_memory=True) for k in ("ir", "vis", "fused", "att")}
        dev = {k: torch.zeros(shape, dtype=torch.float32, device=self.device) for k in ("ir", "vis")}
        entry = {"pin": pin, "dev": dev, "graph": None}
        if self.want_graphs:
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        self._forward(dev["ir"], dev["vis"])
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = self._forward(dev["ir"], dev["vis"])
                entry["graph"], entry["out"] = graph, out
            except Exception as e:  # noqa: BLE001 - logged; eager is the documented fallback
                self.want_graphs = False
                self.graphs_off_reason = f"capture failed: {type(e).__name__}: {e}"
                log.warning("torch backend: CUDA graph capture failed (%s); running eagerly", e)
        self._graphs[shape] = entry
        return entry

    def device_call(self, ir_unit, vis_y):
        """CUDA only: a no-argument callable running the device work of ``infer`` on these inputs,
        already on the GPU (graph replay where captured), for timing without host copies."""
        self.load()
        if self.device.type != "cuda":
            raise ValueError("device_call needs the CUDA device")
        e = self._graph_for(tuple(ir_unit.shape))
        e["dev"]["ir"].copy_(self.torch.from_numpy(np.ascontiguousarray(ir_unit)))
        e["dev"]["vis"].copy_(self.torch.from_numpy(np.ascontiguousarray(vis_y)))
        if e["graph"] is not None:
            return e["graph"].replay
        return lambda: self._forward(e["dev"]["ir"], e["dev"]["vis"])

    def infer(self, ir_unit, vis_y):
        _check_inputs(ir_unit, vis_y)
        self.load()
        torch = self.torch
        if self.device.type == "cpu":
            fused, att = self._forward(torch.from_numpy(np.ascontiguousarray(ir_unit)),
                                       torch.from_numpy(np.ascontiguousarray(vis_y)))
            return fused.numpy(), (att.numpy() if att is not None else None)
        e = self._graph_for(tuple(ir_unit.shape))
        pin, dev = e["pin"], e["dev"]
        pin["ir"].numpy()[...] = ir_unit
        pin["vis"].numpy()[...] = vis_y
        dev["ir"].copy_(pin["ir"], non_blocking=True)
        dev["vis"].copy_(pin["vis"], non_blocking=True)
        if e["graph"] is not None:
            e["graph"].replay()
            fused, att = e["out"]
        else:
            fused, att = self._forward(dev["ir"], dev["vis"])
        pin["fused"].copy_(fused, non_blocking=True)
        if att is not None:
            pin["att"].copy_(att, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return pin["fused"].numpy().copy(), (pin["att"].numpy().copy() if att is not None else None)

    def describe(self):
        if self._net is None:
            return f"torch ({self.source}, not loaded yet)"
        if self.device.type == "cuda":
            name = self.torch.cuda.get_device_name(self.device)
            graphs = "CUDA graphs" if self.want_graphs else f"no CUDA graphs ({self.graphs_off_reason or 'off'})"
            return (f"torch (cuda: {name}, {self.precision}{' autocast' if self.precision == 'fp16' else ''}, {graphs}, "
                    f"{self.kernels}; {self.source})")
        return f"torch (cpu, {self.precision}, {self.torch.get_num_threads()} threads; {self.source})"


# ----------------------------------------------------------------------------------------------
# ONNX Runtime
# ----------------------------------------------------------------------------------------------

class OnnxRuntimeBackend(Backend):
    """An .onnx with inputs ``ir``, ``vis`` [B,1,H,W] and outputs ``fused`` (and ``attention``)."""

    name = "onnxruntime"

    def __init__(self, path: str, *, providers: list[str] | None = None, device: str = "auto", threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserError(f"--backend onnxruntime needs ONNX Runtime ({e}); pip install onnxruntime "
                            "(or onnxruntime-gpu; never both)")
        if not os.path.isfile(path):
            raise UserError(f"--model {path}: no such file")
        avail = ort.get_available_providers()
        if providers is None:
            providers = []
            if device in ("auto", "cuda"):
                providers += [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in avail]
            if device == "cuda" and not providers:
                raise UserError("--device cuda: this ONNX Runtime has no CUDA/TensorRT provider; "
                                "pip install onnxruntime-gpu, or use --device cpu")
            providers.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        prov_args = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                cache = os.path.join(os.path.dirname(os.path.abspath(path)), ".ort_trt_cache")
                prov_args.append((p, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": cache}))
            else:
                prov_args.append(p)
        try:
            self.sess = ort.InferenceSession(path, sess_options=opts, providers=prov_args)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise UserError(f"--model {path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})")
        self.path = path
        ins = {i.name: i for i in self.sess.get_inputs()}
        outs = [o.name for o in self.sess.get_outputs()]
        if set(ins) != {"ir", "vis"} or "fused" not in outs:
            raise UserError(f"--model {path}: expected inputs ir, vis and output fused (and attention); it has "
                            f"inputs {sorted(ins)} and outputs {outs}. Export it with moefusion-export --format onnx")
        self.in_dtype = {k: (np.float16 if "float16" in v.type else np.float32) for k, v in ins.items()}
        hw = ins["ir"].shape[-2:]  # ints when exported without --dynamic, names otherwise
        if all(isinstance(d, int) for d in hw):
            self.size_range = (tuple(hw), tuple(hw))
        self.out_names = ["fused"] + (["attention"] if "attention" in outs else [])
        self.providers = self.sess.get_providers()

    def infer(self, ir_unit, vis_y):
        _check_inputs(ir_unit, vis_y)
        self.check_size(*ir_unit.shape[-2:])
        feeds = {"ir": np.ascontiguousarray(ir_unit, dtype=self.in_dtype["ir"]),
                 "vis": np.ascontiguousarray(vis_y, dtype=self.in_dtype["vis"])}
        res = self.sess.run(self.out_names, feeds)
        fused = res[0].astype(np.float32, copy=False)
        att = res[1].astype(np.float32, copy=False) if len(res) > 1 else None
        return fused, att

    def describe(self):
        return f"onnxruntime ({', '.join(p.replace('ExecutionProvider', '') for p in self.providers)}; {self.path})"


# ----------------------------------------------------------------------------------------------
# TensorRT (10.x Python API) + cuda-python; no torch on this path
# ----------------------------------------------------------------------------------------------

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


def plugin_libraries(engine_path: str, explicit: list[str] | None) -> list[str]:
    """Plugin libraries to load before deserializing: ``--trt-plugins``, the engine's sidecar
    ``<engine>.json`` (key ``plugin_libraries`` or ``plugin_library``), ``MOEFUSION_TRT_PLUGINS``."""
    libs = list(explicit or [])
    side = engine_path + ".json"
    if not libs and os.path.isfile(side):
        try:
            meta = json.load(open(side))
        except (OSError, ValueError):
            meta = {}
        v = meta.get("plugin_libraries") or meta.get("plugin_library") or []
        libs = [v] if isinstance(v, str) else list(v)
        libs = [p if os.path.isabs(p) else os.path.join(os.path.dirname(engine_path), p) for p in libs]
    if not libs and os.environ.get("MOEFUSION_TRT_PLUGINS"):
        libs = os.environ["MOEFUSION_TRT_PLUGINS"].split(os.pathsep)
    return libs


PLUGIN_LIB_NAME = "libmoefusion_trt_plugins.so"  # built by moefusion.kernels.build (see kernels/README.md)


def default_plugin_library() -> str | None:
    """The plugin library installed in the package or built in the repository, if any (the same
    places moefusion.kernels.build writes to; no import of the kernels package, which needs torch)."""
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for p in (os.path.join(pkg, "kernels", "lib", PLUGIN_LIB_NAME),
              os.path.join(os.path.dirname(pkg), "build", "kernels", PLUGIN_LIB_NAME)):
        if os.path.isfile(p):
            return p
    return None


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
        self.plugins = plugin_libraries(path, plugins)
        explicit = bool(self.plugins)
        if not self.plugins and default_plugin_library():
            self.plugins = [default_plugin_library()]
        # once per process (moefusion.export.plugin_registry): a second engine, or an export earlier in
        # this process, must not load the library again (the registry refuses duplicates)
        for lib in list(self.plugins):
            try:
                load_plugin_library(trt, lib, logger=self.logger, flag="--trt-plugins")
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
        if set(self.inputs) != {"ir", "vis"} or "fused" not in self.outputs:
            raise UserError(f"--model {path}: expected engine inputs ir, vis and output fused; it has {self.inputs} -> {self.outputs}")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        hw = tuple(self.engine.get_tensor_shape("ir"))[-2:]
        if -1 in hw:  # dynamic: the first optimisation profile's range
            lo, _, hi = self.engine.get_tensor_profile_shape("ir", 0)
            self.size_range = (tuple(lo)[-2:], tuple(hi)[-2:])
        else:
            self.size_range = (hw, hw)
        self._shape = None
        self._dev: dict = {}
        self._host: dict = {}

    def _alloc(self, shape):
        cudart = self.cudart
        self._free()
        for n in self.inputs:
            self.context.set_input_shape(n, shape)
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
        for n, x in (("ir", ir_unit), ("vis", vis_y)):
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
        return fused, att

    def describe(self):
        return f"tensorrt ({self.trt.__name__} {self.trt.__version__}; {self.path}; plugins: {', '.join(self.plugins) or 'none'})"

    def close(self):
        self._free()


# ----------------------------------------------------------------------------------------------
# moefusion.load() for deployable files
# ----------------------------------------------------------------------------------------------

class BackendModel:
    """What ``moefusion.load`` returns for an .onnx or an .engine: ``fuse(ir, vis)`` with the same
    conventions as the torch model (output shaped and typed like VIS), plus ``backend``."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def fuse(self, ir: np.ndarray, vis: np.ndarray, agc_percentiles=None) -> np.ndarray:
        from ..data.preprocess import DEFAULT_AGC_PERCENTILES, merge_visible, prepare_pair

        ir_u, parts = prepare_pair(ir, vis, agc_percentiles or DEFAULT_AGC_PERCENTILES)
        fused, _ = self.backend.infer(ir_u[None, None], parts.y[None, None].astype(np.float32))
        return merge_visible(fused[0, 0], parts)

    def infer(self, ir_unit: np.ndarray, vis_y: np.ndarray):
        return self.backend.infer(ir_unit, vis_y)

    def describe(self) -> str:
        return self.backend.describe()


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
