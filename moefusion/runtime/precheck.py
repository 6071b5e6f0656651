"""What run_pipeline checks before it loads a model or starts a camera: the registration file, the
outputs (paths, encoders, a window), the source paths/devices and GStreamer elements, and how two
image folders pair. One line naming the flag and the fix for any mistake (UserError)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import UserError
from .capture import SourceError, make_capture
from .registration import Registrar
from .sinks import MultiSink, Sink, make_sink
from .uri import expand_images, pair_by_stem

log = logging.getLogger("moefusion.runtime")


@dataclass
class Checked:
    registrar: Registrar | None
    sink: Sink
    image_pairing: tuple | None = None  # two image folders: (uri.ImagePairing, files per role, rate)
    info: dict = field(default_factory=dict)  # for the statistics' info


def precheck(cfg) -> Checked:
    """Everything that can be checked before loading a model or starting a camera (``cfg``: a
    ``pipeline.PipelineConfig``)."""
    registrar = Registrar.from_file(cfg.registration) if cfg.registration else None
    sinks = [make_sink(o, cfg.output_fps or 30.0, cfg.encoder, segment_s=cfg.segment_s, overwrite=cfg.overwrite)
             for o in cfg.outputs]
    checked = Checked(registrar, sinks[0] if len(sinks) == 1 else MultiSink(sinks))
    for role, uri, opts in (("ir", cfg.ir, cfg.ir_opts), ("vis", cfg.vis, cfg.vis_opts)):
        try:
            make_capture(uri, opts, role).precheck()
        except SourceError as e:
            raise UserError(str(e))
    if cfg.ir.kind == cfg.vis.kind == "images":
        checked.image_pairing = _pair_image_folders(cfg, checked.info)
    return checked


def _pair_image_folders(cfg, info: dict):
    """Two image sequences pair by file stem (as moefusion-fuse does), at one common rate."""
    ir_rate, vis_rate = cfg.ir_opts.rate, cfg.vis_opts.rate
    if ir_rate and vis_rate and abs(ir_rate - vis_rate) > 1e-9:
        raise UserError(f"--ir-rate {ir_rate:g} and --vis-rate {vis_rate:g} differ, but two image folders pair "
                        "frame by frame by file name: give one rate (or the same to both)")
    files = {"ir": expand_images(cfg.ir, "--ir"), "vis": expand_images(cfg.vis, "--vis")}
    pairing = pair_by_stem(files["ir"], files["vis"], f"--ir {cfg.ir.raw}", f"--vis {cfg.vis.raw}")
    for role, other, only in (("IR", "VIS", pairing.only_ir), ("VIS", "IR", pairing.only_vis)):
        if only:
            more = f" and {len(only) - 1} more" if len(only) > 1 else ""
            log.warning("%d %s image(s) have no %s image of the same name (%s%s): counted as unpaired_%s",
                        len(only), role, other, only[0], more, role.lower())
    info["image_pairing"] = {"by": "file name", "only_ir": len(pairing.only_ir),
                              "only_vis": len(pairing.only_vis)}
    return pairing, files, ir_rate or vis_rate
