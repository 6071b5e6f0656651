"""The Python-backend steps of the Triton ensemble that ``moefusion-export --format triton`` writes
beside the model: this file is copied as ``<name>_pre/1/model.py`` and ``<name>_post/1/model.py``
(the step is the config's ``step`` parameter), and the ensemble ``<name>_frames`` runs

    ir_frame, vis_frame (uint8) -> <name>_pre -> ir, vis (the network inputs) -> <name> (the model)
                                                -> fused -> <name>_post -> fused_frame (uint8)

- ``ir_frame``: uint8 (H, W, 1) thermal, or (H, W, 3) (converted to gray); ``vis_frame``: uint8
  (H, W, 3) BGR or (H, W, 1) gray; a leading batch axis when the model batches (``batched``).
  Other sizes than the visible frame's: the IR frame is scaled into it keeping its aspect ratio.
- ``fused_frame``: uint8 like the visible frame: (H, W, 3) BGR, or (H, W, 1) gray.

The work is run_pipeline's own, imported, not copied: ``moefusion.runtime.process.Preprocessor``
(IR and VIS to [0, 1], the VIS luminance, the frame fitted to a fixed-size model: parameters
``model_fit``, ``size_range``) and ``postprocess`` (the fused luminance back to the frame's size,
recombined with the VIS chroma). So Triton's Python needs the ``moefusion`` package importable,
without torch: ``pip install --no-deps <moefusion>`` plus numpy and opencv-python-headless
(docs/export.md, Triton). ``pre`` hands ``post`` the visible frame's YCrCb (or its gray plane) as
``vis_ycrcb``, which is what run_pipeline keeps between the two.

``TritonPythonModel`` imports ``triton_python_backend_utils`` when Triton initialises it; the
frame functions (``FrameSteps``) need nothing of Triton (tests run them outside it).
"""
from __future__ import annotations

import json
import sys

import numpy as np

from moefusion._version import __version__
from moefusion.errors import UserError
from moefusion.runtime.fit import FIT_MODES, plan_model_fit
from moefusion.runtime.process import Prepared, Preprocessor, postprocess

STEPS = ("pre", "post")
pb_utils = None  # triton_python_backend_utils, bound by TritonPythonModel.initialize (it exists only in Triton)
NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}


class FrameSteps:
    """The two steps on numpy frames. ``size_range``: what the model takes, ((min h, min w),
    (max h, max w)) or None (any size), as a runtime backend's ``size_range``; ``model_fit``:
    letterbox | stretch (run_pipeline's ``--model-fit``); ``dtype``: the model's input type."""

    def __init__(self, size_range=None, model_fit: str = "letterbox", dtype=np.float32, batched: bool = False):
        if model_fit not in FIT_MODES:
            raise ValueError(f"model_fit {model_fit!r}: use one of {', '.join(FIT_MODES)}")
        self.size_range = None if size_range is None else tuple(tuple(int(v) for v in hw) for hw in size_range)
        self.model_fit = model_fit
        self.dtype = np.dtype(dtype)
        self.batched = batched
        self._fits: dict = {}
        self.preprocessor = Preprocessor(fit_for=self.fit_for)

    def fit_for(self, h: int, w: int):
        fit = self._fits.get((h, w))
        if fit is None:
            fit = self._fits[(h, w)] = plan_model_fit((h, w), self.size_range, self.model_fit)
        return fit

    # -- one frame ------------------------------------------------------------------------------
    def pre_frame(self, ir: np.ndarray, vis: np.ndarray):
        """(ir, vis) uint8 frames -> (model ir [1, 1, h, w], model vis [1, 1, h, w], vis_ycrcb (H, W, C))."""
        for name, a in (("ir_frame", ir), ("vis_frame", vis)):
            if a.dtype != np.uint8:
                raise ValueError(f"{name} must be uint8, got {a.dtype}")
            if a.ndim != 3 or a.shape[2] not in (1, 3):
                raise ValueError(f"{name} must be (H, W, 1) or (H, W, 3), got shape {a.shape}")
        prep = self.preprocessor(ir, vis)
        ycrcb = prep.ycrcb if prep.ycrcb is not None else vis[:, :, :1]
        return (prep.model_ir.astype(self.dtype, copy=False), prep.model_vis.astype(self.dtype, copy=False),
                np.ascontiguousarray(ycrcb))

    def post_frame(self, fused: np.ndarray, vis_ycrcb: np.ndarray) -> np.ndarray:
        """The model's fused luminance ([1, 1, h, w] or [h, w]) + ``vis_ycrcb`` -> uint8 (H, W, C)."""
        if vis_ycrcb.dtype != np.uint8 or vis_ycrcb.ndim != 3 or vis_ycrcb.shape[2] not in (1, 3):
            raise ValueError(f"vis_ycrcb must be uint8 (H, W, 1|3), got {vis_ycrcb.dtype} {vis_ycrcb.shape}")
        h, w = vis_ycrcb.shape[:2]
        colour = vis_ycrcb.shape[2] == 3
        prep = Prepared(ir_unit=None, vis_y=np.broadcast_to(np.float32(0), (1, 1, h, w)),
                        ycrcb=np.array(vis_ycrcb) if colour else None,  # postprocess writes Y into it
                        parts=None, vis=vis_ycrcb if colour else vis_ycrcb[:, :, 0], fit=self.fit_for(h, w))
        fused_y = np.ascontiguousarray(fused.reshape(fused.shape[-2:]), dtype=np.float32)
        out = postprocess(fused_y, prep)
        return out if out.ndim == 3 else out[:, :, None]

    # -- a request: one frame, or a batch of frames of one size ------------------------------------
    def pre(self, ir: np.ndarray, vis: np.ndarray):
        if not self.batched:
            return self.pre_frame(ir, vis)
        if len(ir) != len(vis):
            raise ValueError(f"ir_frame and vis_frame batches differ: {len(ir)} and {len(vis)}")
        parts = [self.pre_frame(i, v) for i, v in zip(ir, vis)]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.stack([p[2] for p in parts]))

    def post(self, fused: np.ndarray, vis_ycrcb: np.ndarray) -> np.ndarray:
        if not self.batched:
            return self.post_frame(fused, vis_ycrcb)
        return np.stack([self.post_frame(f, v) for f, v in zip(fused, vis_ycrcb)])

    @classmethod
    def from_config(cls, config: dict) -> tuple[str, FrameSteps]:
        """(step, FrameSteps) from a step's model configuration (the JSON Triton passes to ``initialize``)."""
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        step = params.get("step", "")
        if step not in STEPS:
            raise ValueError(f"parameter step {step!r}: use one of {', '.join(STEPS)}")
        dtype = np.float32
        for out in config.get("output") or []:
            if out.get("name") == "ir":
                dtype = NUMPY_TYPES.get(out.get("data_type"), np.float32)
        size_range = json.loads(params.get("size_range") or "null")
        return step, cls(size_range, params.get("model_fit") or "letterbox", dtype, params.get("batched") == "true")


class TritonPythonModel:
    """Triton's Python backend entry point (one class per model.py, as the backend requires)."""

    def initialize(self, args):
        global pb_utils
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        self.step, self.frames = FrameSteps.from_config(config)
        made_by = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}.get(
            "moefusion_version", "")
        if made_by and made_by != __version__:
            print(f"{args.get('model_name', 'moefusion step')}: written by moefusion {made_by}, running with "
                  f"moefusion {__version__}", file=sys.stderr)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                if self.step == "pre":
                    ir = pb_utils.get_input_tensor_by_name(request, "ir_frame").as_numpy()
                    vis = pb_utils.get_input_tensor_by_name(request, "vis_frame").as_numpy()
                    m_ir, m_vis, ycrcb = self.frames.pre(ir, vis)
                    outs = [pb_utils.Tensor("ir", m_ir), pb_utils.Tensor("vis", m_vis),
                            pb_utils.Tensor("vis_ycrcb", ycrcb)]
                else:
                    fused = pb_utils.get_input_tensor_by_name(request, "fused").as_numpy()
                    ycrcb = pb_utils.get_input_tensor_by_name(request, "vis_ycrcb").as_numpy()
                    outs = [pb_utils.Tensor("fused_frame", self.frames.post(fused, ycrcb))]
                responses.append(pb_utils.InferenceResponse(output_tensors=outs))
            except Exception as e:  # noqa: BLE001 - a bad request is that request's error, not the server's
                msg = str(e) if isinstance(e, (ValueError, UserError)) else f"{type(e).__name__}: {e}"
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(msg)))
        return responses

    def finalize(self):
        pass

