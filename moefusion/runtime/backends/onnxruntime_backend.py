"""``onnxruntime``: an exported .onnx (TensorRT/CUDA execution providers when present, else CPU)."""
from __future__ import annotations

import os

import numpy as np

from ...errors import UserError
from .base import Backend, _check_inputs
from .stream_state import StreamStates, stream_spec_from_metadata


class OnnxRuntimeBackend(Backend):
    """An .onnx with inputs ``ir``, ``vis`` [B,1,H,W] and outputs ``fused`` (and ``attention``); a stream
    graph (``moefusion-export --stream``) also has the state inputs ``state_*`` and outputs ``next_*``,
    which this backend keeps per stream (zeros on the first frame: per-frame use when stream mode is off)."""

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
        frame_ins = {k for k in ins if not k.startswith("state_")}
        if frame_ins != {"ir", "vis"} or "fused" not in outs:
            raise UserError(f"--model {path}: expected inputs ir, vis and output fused (and attention); it has "
                            f"inputs {sorted(ins)} and outputs {outs}. Export it with moefusion-export --format onnx")
        self.in_dtype = {k: (np.float16 if "float16" in v.type else np.float32) for k, v in ins.items()}
        meta = {k[len("moefusion."):]: v for k, v in self.sess.get_modelmeta().custom_metadata_map.items()
                if k.startswith("moefusion.")}
        spec, why = stream_spec_from_metadata(meta, list(ins))
        if spec is None and len(frame_ins) != len(ins):
            raise UserError(f"--model {path}: {why}")
        self.states = StreamStates(spec, self.in_dtype) if spec else None
        self.stream_capable = spec is not None
        self.stream_unavailable = why
        hw = ins["ir"].shape[-2:]  # ints when exported without --dynamic, names otherwise
        if all(isinstance(d, int) for d in hw):
            self.size_range = (tuple(hw), tuple(hw))
        self.out_names = ["fused"] + (["attention"] if "attention" in outs else [])
        if self.states is not None:
            self.out_names += self.states.spec.outputs
        self.providers = self.sess.get_providers()

    def reset_stream(self) -> None:
        if self.states is not None:
            self.states.reset()

    def infer(self, ir_unit, vis_y):
        _check_inputs(ir_unit, vis_y)
        self.check_size(*ir_unit.shape[-2:])
        feeds = {"ir": np.ascontiguousarray(ir_unit, dtype=self.in_dtype["ir"]),
                 "vis": np.ascontiguousarray(vis_y, dtype=self.in_dtype["vis"])}
        if self.states is not None:  # a stream graph: carried state in stream mode, else a fresh zero state
            b, _, h, w = ir_unit.shape
            feeds.update(self.states.feeds(b, h, w, self.stream_mode))
        res = self.sess.run(self.out_names, feeds)
        fused = res[0].astype(np.float32, copy=False)
        att = res[1].astype(np.float32, copy=False) if "attention" in self.out_names else None
        if self.states is not None:
            self.states.update(dict(zip(self.out_names, res)), self.stream_mode)
        return fused, att

    def describe(self):
        return f"onnxruntime ({', '.join(p.replace('ExecutionProvider', '') for p in self.providers)}; {self.path})"
