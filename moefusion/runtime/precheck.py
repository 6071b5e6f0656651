"""What run_pipeline checks before it loads a model or starts a camera: the outputs first, without
creating anything (``check_outputs``: stream hosts resolve, file folders and --stats-json writable,
free space), IR and VIS not the same file (``check_sources_differ``), then the registration file,
the outputs' encoders and window, the source paths/devices and GStreamer elements, and how two
image folders pair (``precheck``). One line naming the flag and the fix for any mistake (UserError)."""
from __future__ import annotations

import logging
import os
import socket
import threading
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


# ----------------------------------------------------------------------------------------------
# Outputs and sources, checked before anything is created
# ----------------------------------------------------------------------------------------------

RESOLVE_TIMEOUT_S = 5.0
LOW_SPACE_BYTES = 1 << 30  # warn below 1 GiB free ...
LOW_SPACE_FRACTION = 0.05  # ... or below 5 % of the file system


def check_outputs(cfg, stats_json: str | None = None) -> list[str]:
    """Before any source, model or file is opened, and without creating anything: the host of every
    udp:// and rtsp:// output resolves, the folder of every file output and of ``stats_json`` can be
    written (the nearest existing folder, when the rest is still to be made), and their file system
    has room (a warning below 1 GiB or 5 % free; returned, and logged). UserError otherwise."""
    warnings = []
    for o in cfg.outputs:
        if o.kind in ("udp", "rtsp"):
            _check_resolves(o.host, o.port, f"--output {o.raw}")
        elif o.kind == "file":
            folder = _check_folder_writable(o.location, f"--output {o.raw}")
            w = _low_space(folder, f"--output {o.raw}")
            if w and w not in warnings:
                warnings.append(w)
    if stats_json and stats_json != "-":
        _check_folder_writable(stats_json, f"--stats-json {stats_json}")
    for w in warnings:
        log.warning("%s", w)
    return warnings


def _check_resolves(host: str, port: int, what: str) -> None:
    """socket.getaddrinfo in a thread, so that a DNS server that never answers costs RESOLVE_TIMEOUT_S
    and a warning, not a hang."""
    result: list = []

    def resolve():
        try:
            result.append(socket.getaddrinfo(host, port))
        except (OSError, UnicodeError) as e:  # socket.gaierror is an OSError
            result.append(e)

    t = threading.Thread(target=resolve, name="resolve-output", daemon=True)
    t.start()
    t.join(RESOLVE_TIMEOUT_S)
    if not result:
        log.warning("%s: the host name %s did not resolve within %g s; starting anyway", what, host, RESOLVE_TIMEOUT_S)
        return
    if isinstance(result[0], Exception):
        e = result[0]
        reason = getattr(e, "strerror", None) or str(e)
        raise UserError(f"{what}: cannot resolve the host {host!r} ({reason}); check the name, or give the "
                        "receiver's IP address")


def _existing_folder(path: str, what: str) -> str:
    """The nearest folder of ``path``'s parent that exists (the rest is created when written)."""
    target = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(target):
        raise UserError(f"{what}: is a folder; give a file name such as {os.path.join(path, 'fused.mp4')}")
    d = os.path.dirname(target)
    while not os.path.exists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise UserError(f"{what}: cannot write there: {d} is a file, not a folder; choose a writable output path")
    return d


def _check_folder_writable(path: str, what: str) -> str:
    d = _existing_folder(path, what)
    try:
        read_only = bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise UserError(f"{what}: cannot write there: {d} is on a read-only file system; choose a writable output path")
    if not os.access(d, os.W_OK | os.X_OK):
        raise UserError(f"{what}: cannot write there: the folder {d} is not writable (permission denied); "
                        "choose a writable output path")
    return d


def _low_space(folder: str, what: str) -> str:
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    if total <= 0 or (free >= LOW_SPACE_BYTES and free >= LOW_SPACE_FRACTION * total):
        return ""
    return (f"{what}: only {free / 1e9:.2f} GB ({100 * free / total:.1f} %) free on the file system of {folder}; "
            "the recording fails when it is full (H.264 takes roughly 10-60 MB a minute)")


def _same_path(a: str, b: str) -> bool:
    a, b = os.path.expanduser(a), os.path.expanduser(b)
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)  # same inode: symbolic or hard links, ./x and x
        except OSError:
            pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_sources_differ(ir, vis) -> None:
    """IR and VIS the same file, image folder or glob (same resolved path or same inode): fusing a
    stream with itself shows nothing a single camera does not, and is always a mistake on the command
    line (for a run without cameras there are --demo and test:// sources)."""
    if ir.kind in ("file", "images") and vis.kind in ("file", "images") and _same_path(ir.location, vis.location):
        raise UserError(f"--ir {ir.raw} and --vis {vis.raw} are the same file; give the thermal and the visible "
                        "recording (to try the pipeline without both, use --demo or test:// sources)")
