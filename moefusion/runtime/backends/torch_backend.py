"""``torch``: a ``moefusion.load()`` model run by PyTorch (CUDA: fp16 autocast, CUDA graphs; CPU: fp32).

Stream mode (``set_stream_mode(True)``, model/stream.py): each ``infer`` is the next frame of one
video, run by the model's ``forward_stream_unit`` with the temporal state kept here (None at the
start and after ``reset_stream()``; a new frame size starts afresh). On CUDA the stream step is a
CUDA graph too: the state lives in static buffers that are the graph's inputs, and the graph itself
copies the new state into them as its last step, so one replay is one frame; a reset zeroes them
(all zeros is the model's "no previous frame" state)."""
from __future__ import annotations

import logging

import numpy as np

from ...errors import UserError
from .base import Backend, _check_inputs

log = logging.getLogger("moefusion.runtime")


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
    """A checkpoint (``model.checkpoint.load_checkpoint``, what ``moefusion.load`` gives for one) run by
    PyTorch. Loaded lazily (first warmup/infer).

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
        self._state = None  # stream mode, eager: the state returned by the last frame (None: a new stream)
        self._stream_key = None  # stream mode, CUDA graphs: the shape whose static state holds the stream
        self._fresh = True  # stream mode: the next frame starts a new stream

    # -- stream mode ----------------------------------------------------------------------
    @property
    def stream_capable(self) -> bool:
        """A MoE-Fusion model (``forward_stream_unit``) carries temporal state; loads the model to know."""
        self.load()
        return callable(getattr(self._net, "forward_stream_unit", None))

    @property
    def stream_unavailable(self) -> str:
        return ("the loaded model has no forward_stream_unit() (not a MoE-Fusion model), so it has no "
                "temporal state")

    def reset_stream(self) -> None:
        self._state, self._fresh = None, True

    def load(self):
        if self._net is not None:
            return
        try:
            import torch  # optional, and seconds to import: only when this backend is used
        except ImportError as e:
            raise UserError(f"--backend torch needs PyTorch ({e}); pip install torch, or use --backend onnxruntime with an .onnx")
        self.torch = torch
        if self.want_device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
        use_cuda = self.want_device in ("auto", "cuda") and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        if self._model is None:
            from ...model.checkpoint import load_checkpoint  # imports torch: only when this backend is used

            try:
                self._model = load_checkpoint(self.path, device=self.device)
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
            from ...kernels import fast  # imports torch: only on CUDA, when the model is loaded
            from ...kernels._lib import load_library

            load_library()
        except Exception as e:  # noqa: BLE001 - the PyTorch ops compute the same function
            log.info("torch backend: CUDA kernels not used (%s)", str(e).splitlines()[0])
            return "PyTorch ops (kernels not built: python -m moefusion.kernels.build --install)"
        fast.accelerate(net)
        return "moefusion CUDA kernels"

    def _run(self, fn, *args):
        """``fn(*args)`` in inference mode, under fp16 autocast when the precision is fp16."""
        torch = self.torch
        with torch.inference_mode():
            if self.precision == "fp16":
                with torch.autocast("cuda", dtype=torch.float16):
                    return fn(*args)
            return fn(*args)

    def _forward(self, ir, vis):
        out = self._run(self._net.forward_unit, ir, vis)
        if isinstance(out, (tuple, list)):
            fused, att = out[0], (out[1] if len(out) > 1 else None)
        else:
            fused, att = out, None
        return fused.float(), (att.float() if att is not None else None)

    def _forward_stream(self, ir, vis, state):
        """-> (fused, attention, next state): one frame of a stream (fp16 autocast on CUDA)."""
        fused, att, new = self._run(self._net.forward_stream_unit, ir, vis, state)
        return fused.float(), (att.float() if att is not None else None), new

    def _static_step(self, entry):
        """One frame of a stream on the static buffers of ``entry`` (what the stream graph captures):
        reads dev ir/vis and the state, writes the state for the next frame back into the same
        buffers. -> (fused, attention)."""
        with self.torch.inference_mode():
            fused, att, new = self._forward_stream(entry["dev"]["ir"], entry["dev"]["vis"], entry["state"])
            for buf, value in zip(entry["state"], new):
                buf.copy_(value)  # a cast where the autocast step made fp16 (the buffers stay fp32)
        return fused, att

    def _stream_entry(self, shape):
        """The static buffers, state and (graphs on) CUDA graph of the stream step at ``shape``."""
        key = ("stream", shape)
        if key not in self._graphs:
            b, _, h, w = shape
            with self.torch.inference_mode():
                state = self._net.initial_state(b, h, w)
            self._graphs[key] = self._entry(shape, self._static_step, "the stream step", state=state)
        return self._graphs[key]

    def _infer_stream_cuda(self, ir_unit, vis_y):
        shape = tuple(ir_unit.shape)
        e = self._stream_entry(shape)
        if self._fresh or self._stream_key != shape:  # a new stream, or another size: no previous frame
            with self.torch.inference_mode():
                for buf in e["state"]:
                    buf.zero_()
            self._fresh, self._stream_key = False, shape
        return self._replay(e, ir_unit, vis_y)

    def _graph_for(self, shape):
        if shape not in self._graphs:
            self._graphs[shape] = self._entry(shape, lambda e: self._forward(e["dev"]["ir"], e["dev"]["vis"]), "")
        return self._graphs[shape]

    def _entry(self, shape, step, what: str, **extra) -> dict:
        """Pinned host and device buffers at ``shape`` and, graphs on, a CUDA graph of ``step(entry)``
        (-> (fused, attention)) captured on them; a failed capture turns graphs off, logged."""
        torch = self.torch
        e = {"pin": {k: torch.empty(shape, dtype=torch.float32, pin_memory=True) for k in ("ir", "vis", "fused", "att")},
             "dev": {k: torch.zeros(shape, dtype=torch.float32, device=self.device) for k in ("ir", "vis")},
             "step": step, "graph": None, **extra}
        if self.want_graphs:
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(3):
                        step(e)
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = step(e)
                e["graph"], e["out"] = graph, out
            except Exception as ex:  # noqa: BLE001 - logged; eager is the documented fallback
                self.want_graphs = False
                where = f"{what} " if what else ""
                self.graphs_off_reason = f"{where}capture failed: {type(ex).__name__}: {ex}"
                log.warning("torch backend: CUDA graph capture %sfailed (%s); running eagerly",
                            f"of {what} " if what else "", ex)
        return e

    def _replay(self, e, ir_unit, vis_y):
        """One call on entry ``e``: inputs through the pinned buffers, the graph (or the step, eager),
        the outputs back."""
        pin, dev = e["pin"], e["dev"]
        pin["ir"].numpy()[...] = ir_unit
        pin["vis"].numpy()[...] = vis_y
        dev["ir"].copy_(pin["ir"], non_blocking=True)
        dev["vis"].copy_(pin["vis"], non_blocking=True)
        if e["graph"] is not None:
            e["graph"].replay()
            fused, att = e["out"]
        else:
            fused, att = e["step"](e)
        pin["fused"].copy_(fused, non_blocking=True)
        if att is not None:
            pin["att"].copy_(att, non_blocking=True)
        self.torch.cuda.current_stream().synchronize()
        return pin["fused"].numpy().copy(), (pin["att"].numpy().copy() if att is not None else None)

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
        if self.stream_mode:
            if self.device.type == "cuda" and callable(getattr(self._net, "initial_state", None)):
                return self._infer_stream_cuda(ir_unit, vis_y)
            if self._fresh:
                self._state, self._fresh = None, False
            dev = self.device
            fused, att, self._state = self._forward_stream(torch.from_numpy(np.ascontiguousarray(ir_unit)).to(dev),
                                                           torch.from_numpy(np.ascontiguousarray(vis_y)).to(dev),
                                                           self._state)  # a new size starts afresh in the model
            return fused.cpu().numpy(), (att.cpu().numpy() if att is not None else None)
        if self.device.type == "cpu":
            fused, att = self._forward(torch.from_numpy(np.ascontiguousarray(ir_unit)),
                                       torch.from_numpy(np.ascontiguousarray(vis_y)))
            return fused.numpy(), (att.numpy() if att is not None else None)
        return self._replay(self._graph_for(tuple(ir_unit.shape)), ir_unit, vis_y)

    def describe(self):
        if self._net is None:
            return f"torch ({self.source}, not loaded yet)"
        if self.device.type == "cuda":
            name = self.torch.cuda.get_device_name(self.device)
            graphs = "CUDA graphs" if self.want_graphs else f"no CUDA graphs ({self.graphs_off_reason or 'off'})"
            return (f"torch (cuda: {name}, {self.precision}{' autocast' if self.precision == 'fp16' else ''}, {graphs}, "
                    f"{self.kernels}{', stream mode' if self.stream_mode else ''}; {self.source})")
        return (f"torch (cpu, {self.precision}, {self.torch.get_num_threads()} threads"
                f"{', stream mode' if self.stream_mode else ''}; {self.source})")

