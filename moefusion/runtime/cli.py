"""``run_pipeline``: live IR + VIS fusion from two cameras (or files) to a window, file or stream.

    run_pipeline --ir /dev/video1 --vis /dev/video0                 # window (when a display exists)
    run_pipeline --ir /dev/video1 --ir-format GRAY16_LE --vis csi://0 --output file://fused.mp4
    run_pipeline --ir thermal.mp4 --vis rgb.mp4 --registration reg.yaml --output out.mp4 --view grid
    run_pipeline --demo                                              # no camera needed

Exit status: 0 after a normal end (end of the files, --max-frames, SIGINT/SIGTERM, window
closed); 2 for a user mistake (one line naming the flag/device/element and the fix); 1 when
the run failed mid-way (a camera lost for longer than --reconnect-timeout, an output error) or
produced no output frame (one line saying why).

Every numeric flag is checked while the command line is parsed (``argtypes``: finite, in range), and
the outputs (host names, folders, free space, --stats-json) right after (``precheck.check_outputs``),
all before any file is opened or any source or model starts.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import signal
import sys

from ..errors import UserError, cli_entry
from ..files import atomic_write_text
from ..kernels.plugins import PLUGIN_ENV
from . import argtypes
from .backends import BACKENDS, _cuda_device_count_no_torch, backend_name, model_kind, select_backend
from .fit import FIT_MODES
from .pipeline import Pipeline, PipelineConfig
from .precheck import check_outputs, check_sources_differ, precheck
from .process import VIEWS
from .samplegen import ensure_demo_clips, real_demo_clips
from .sinks import ENCODER_CHOICES, display_available
from .sinks.launch import choose_display_sink
from .uri import OUTPUT_HELP, StreamOptions, add_stream_args, parse_input_uri, parse_output_uri

log = logging.getLogger("moefusion.runtime")

DEMO_OUTPUT = "out/run_pipeline_demo.mp4"
DEMO_STATS = "out/run_pipeline_demo.json"

class _ArgumentError(UserError):
    """A bad flag or value, found while parsing: printed as ``run_pipeline: error: ...`` (one line)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (``run_pipeline: error: --vis-rate: got inf; allowed: ...``,
    exit 2) instead of the whole usage block."""

    def error(self, message):
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        raise _ArgumentError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="run_pipeline",
        description="Fuse a thermal (IR) and a visible (VIS) video stream live with MoE-Fusion.",
        epilog="Sources and outputs are URIs (after jetson-utils). See docs/runtime.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", action="store_true",
                   help=f"run on the bundled real thermal + visible clips (6 s of people in smoke, M3SVD; no camera "
                        f"needed): writes {DEMO_OUTPUT}, prints statistics, opens a window when a display exists")
    add_stream_args(p, "ir", "thermal (IR)")
    add_stream_args(p, "vis", "visible (VIS)")
    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="PATH", help="a checkpoint (.pt), an .onnx or an .engine (default: bundled weights)")
    m.add_argument("--backend", type=backend_name, choices=BACKENDS, default="auto",
                   help="inference backend (default auto: the fastest that can run; the choice is logged: on a "
                        "CPU a checkpoint runs as its ONNX export in ONNX Runtime, exported once and cached in "
                        "~/.cache/moefusion/onnx); onnx is accepted for onnxruntime, trt for tensorrt")
    m.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    m.add_argument("--precision", choices=("auto", "fp16", "fp32"), default="auto",
                   help="torch backend: auto = fp16 on a GPU, fp32 on the CPU")
    m.add_argument("--no-cuda-graphs", action="store_true", help="torch backend: do not capture CUDA graphs")
    m.add_argument("--model-fit", choices=FIT_MODES, default="letterbox",
                   help="a model with a fixed input size (.onnx exported without --dynamic, an engine): frames are "
                        "scaled to it and the output back; letterbox (default) keeps the aspect ratio and pads, "
                        "stretch fills the input. Dynamic models run at the frames' size")
    m.add_argument("--no-stream-mode", dest="stream_mode", action="store_false",
                   help="fuse every frame alone; by default the model runs in stream mode (files and cameras): "
                        "its temporal state is carried from frame to frame (steadier video: no flicker of the "
                        "experts, blend maps and brightness where nothing moved) and starts afresh when a source "
                        "reconnects, a looping file starts again or the frame size changes. A backend whose model "
                        "has no state (--backend average, an .onnx exported without it) runs per frame; the log "
                        "says why, and --stats-json records stream_mode")
    m.add_argument("--trt-plugins", action="append", metavar="LIB",
                   help=f"TensorRT plugin library to load (default: from <engine>.json or {PLUGIN_ENV})")
    s = p.add_argument_group("synchronisation and registration")
    s.add_argument("--sync-tolerance", type=argtypes.sync_tolerance_ms, default=25.0, metavar="MS",
                   help=f"pair frames whose timestamps differ by at most this (default 25 ms; "
                        f"0 < MS <= {argtypes.MAX_TOLERANCE_MS:g})")
    s.add_argument("--sync-offset", type=argtypes.sync_offset_ms, default=0.0, metavar="MS",
                   help=f"added to IR timestamps before pairing (a thermal camera that delivers late: negative; "
                        f"at most {argtypes.MAX_OFFSET_MS:g} ms either way)")
    s.add_argument("--registration", metavar="FILE",
                   help="IR-to-VIS homography (YAML/JSON from moefusion-calibrate register): warp IR into VIS, crop "
                        "to the common field of view")
    o = p.add_argument_group("output")
    o.add_argument("--output", action="append", metavar="URI",
                   help=f"{OUTPUT_HELP}; repeat for several (default: display://0 when a display exists)")
    o.add_argument("--view", choices=VIEWS, default=None, help="fused (default), side-by-side (IR|VIS|fused) or "
                   "grid (IR, VIS, fused, attention)")
    o.add_argument("--overlay", action="store_true", help="draw FPS and latency on the output")
    o.add_argument("--encoder", choices=ENCODER_CHOICES, default="auto",
                   help="H.264 encoder for file/stream outputs (auto: nvv4l2h264enc only with NVENC, else x264enc, openh264enc; "
                        "files fall back to OpenCV mp4v)")
    o.add_argument("--output-rate", type=argtypes.rate_hz, metavar="HZ",
                   help="output frame rate (default: the slower source's; 0 < HZ <= "
                        f"{argtypes.MAX_RATE_HZ:g}): frames are skipped or repeated by their "
                        "timestamps, so the output keeps the input's duration")
    o.add_argument("--segment", type=argtypes.segment_s, default=0.0, metavar="S",
                   help="file outputs: start a new file every S (>= 1) seconds (NAME_00000.EXT, ...; each renamed "
                        "from .partial once complete; default 0: one file)")
    o.add_argument("--overwrite", action="store_true",
                   help="file outputs: replace an existing recording (default: keep it and write NAME.1.EXT, ...; "
                        "segments continue their numbering)")
    r = p.add_argument_group("run")
    r.add_argument("--stats-json", metavar="FILE",
                   help="write the statistics as JSON at exit ('-': stdout, JSON only; the summary then goes to stderr)")
    r.add_argument("--stats-interval", type=argtypes.stats_interval_s, default=5.0, metavar="S",
                   help="print statistics every S s (default 5; 0: off)")
    r.add_argument("--max-frames", type=argtypes.max_frames, default=0, metavar="N",
                   help="stop after N output frames (default 0: no limit)")
    r.add_argument("--realtime", action="store_true",
                   help="play files and image folders at their frame rate (like cameras)")
    r.add_argument("--queue-size", type=argtypes.queue_size, default=None, metavar="N",
                   help=f"frames queued between stages, 1-{argtypes.MAX_QUEUE} (default: 1 with live sources, for "
                        "the lowest latency; 4 for files)")
    r.add_argument("--stall-timeout", type=argtypes.stall_timeout_s, default=3.0, metavar="S",
                   help="a live source silent this long (S > 0) is reconnected (default 3 s)")
    r.add_argument("--reconnect-timeout", type=argtypes.reconnect_timeout_s, default=-1.0, metavar="S",
                   help="give up on a lost camera after S (>= 0) s (default -1: retry forever; 0: never retry)")
    r.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (not the one at set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _setup_logging(level: str):
    root = logging.getLogger("moefusion")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("[run_pipeline] %(message)s"))
        root.addHandler(h)
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False
    for name in ("moefusion.runtime", "moefusion.export"):  # inherit --log-level, whatever ran before
        logging.getLogger(name).setLevel(logging.NOTSET)


def _window_possible() -> bool:
    """For the demo's optional window: a display is set and a window sink opens on it (if not, the
    demo still writes its file, and says why there is no window)."""
    if not display_available():
        log.info("demo: no window opens: no display ($DISPLAY and $WAYLAND_DISPLAY are not set); the fused video "
                 "is written to %s", os.path.abspath(DEMO_OUTPUT))
        return False
    try:
        choose_display_sink("--demo window")
    except UserError as e:
        log.warning("%s; the demo writes %s only", e, DEMO_OUTPUT)
        return False
    return True


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Validate the flags and build the configuration (UserError on any mistake)."""
    if args.demo:
        real = real_demo_clips() if not (args.ir or args.vis) else None
        if real is not None:  # real footage, already registered (samples/demo/README.md)
            args.ir, args.vis = str(real[0]), str(real[1])
        else:
            d = ensure_demo_clips()
            log.info("demo: the real clips (samples/demo/m3svd_*) are not here; playing the synthetic ones")
            args.ir = args.ir or str(d / "ir.mp4")
            args.vis = args.vis or str(d / "vis.mp4")
            if args.registration is None:
                args.registration = str(d / "registration.yaml")
        if args.output is None:
            args.output = [DEMO_OUTPUT] + (["display://0"] if _window_possible() else [])
        args.view = args.view or "grid"
        args.overlay = True
        args.overwrite = True  # the demo's output is a scratch file, replaced on every run
        if args.stats_json is None:
            args.stats_json = DEMO_STATS
    ir = parse_input_uri(args.ir, "--ir")
    vis = parse_input_uri(args.vis, "--vis")
    if ir.kind == vis.kind and ir.location == vis.location and ir.kind in ("v4l2", "csi"):
        raise UserError(f"--ir and --vis are the same device ({ir.location}); give the thermal and the visible camera")
    check_sources_differ(ir, vis)
    if args.output is None:
        if not display_available():
            raise UserError("no --output given and no display (DISPLAY is not set): use --output file://out.mp4, "
                            "udp://HOST:PORT or none")
        args.output = ["display://0"]
    outputs = [parse_output_uri(o, "--output") for o in args.output]
    if len(outputs) > 1 and any(o.kind == "none" for o in outputs):
        outputs = [o for o in outputs if o.kind != "none"]
    # the numbers were checked by their argparse types (argtypes.py)
    if args.segment and not any(o.kind == "file" for o in outputs):
        raise UserError("--segment applies to file outputs: add --output file://NAME.mp4")
    return PipelineConfig(
        ir=ir, vis=vis,
        ir_opts=StreamOptions.from_args(args, "ir"), vis_opts=StreamOptions.from_args(args, "vis"),
        outputs=outputs, view=args.view or "fused", overlay=args.overlay,
        sync_tolerance_ms=args.sync_tolerance, sync_offset_ms=args.sync_offset,
        registration=args.registration, max_frames=args.max_frames, queue_size=args.queue_size,
        realtime=args.realtime, stats_interval=args.stats_interval, stall_timeout=args.stall_timeout,
        reconnect_timeout=args.reconnect_timeout, encoder=args.encoder, output_fps=args.output_rate,
        segment_s=args.segment, overwrite=args.overwrite, model_fit=args.model_fit, stream_mode=args.stream_mode)


def write_json(d: dict, path: str) -> None:
    """Atomically (temp file + rename)."""
    atomic_write_text(path, json.dumps(d, indent=2) + "\n")


def format_summary(d: dict) -> str:
    lat, skew = d.get("latency_ms") or {}, (d.get("skew_ms") or {}).get("abs") or {}
    drops = ", ".join(f"{k} {v}" for k, v in d.get("drops", {}).items() if v) or "none"

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    lines = [
        f"frames: IR {d['frames_in'].get('ir', 0)}, VIS {d['frames_in'].get('vis', 0)}, pairs {d['pairs']}, "
        f"output {d['frames_out']} at {d['fps']:.1f} FPS (the run took {d['duration_s']:.1f} s with start-up)",
        f"latency (capture to output) p50 {ms(lat.get('p50'))} / p95 {ms(lat.get('p95'))} / p99 {ms(lat.get('p99'))} ms",
        f"|skew| IR-VIS p50 {ms(skew.get('p50'))} / p95 {ms(skew.get('p95'))} / max {ms(skew.get('max'))} ms",
        f"drops: {drops}",
        "stage ms (p50): " + ", ".join(f"{k} {v['p50']:.2f}" for k, v in d.get("stage_ms", {}).items()),
        f"backend: {d.get('backend_detail', d.get('backend'))}",
    ]
    if "stream_mode" in d:
        lines.append(f"stream mode: on (state reset {d.get('stream_resets', 0)} times)" if d["stream_mode"] else
                     f"stream mode: off ({d.get('stream_mode_off', 'per frame')})")
    if d.get("output_file"):
        lines.append(f"output: {d['output_file']}")
    for w in d.get("warnings") or []:
        lines.append(f"warning: {w}")
    if any(d.get("reconnects", {}).values()):
        lines.append("reconnects: " + ", ".join(f"{k} {v}" for k, v in d["reconnects"].items()))
    return "\n".join(lines)


def cpu_onnx_model(backend: str, model: str | None, device: str) -> str | None:
    """``--backend auto`` with a checkpoint (or the default weights) and no CUDA GPU: the checkpoint's ONNX
    export (cached, exported on first use: moefusion/export/cache.py), which ONNX Runtime runs faster than
    PyTorch on a CPU (docs/benchmark.md). None where it does not apply or ONNX Runtime is not installed."""
    if backend != "auto" or model_kind(model) != "checkpoint" or device == "cuda":
        return None
    if device != "cpu" and _cuda_device_count_no_torch() > 0:
        return None
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        log.info("backend auto: ONNX Runtime is not installed (pip install 'moefusion[export]'): PyTorch on the CPU")
        return None
    from ..export.cache import cached_stream_onnx  # the exporter (torch): only here
    from ..model.checkpoint import DEFAULT_WEIGHTS

    checkpoint = model or str(DEFAULT_WEIGHTS)
    if not os.path.isfile(checkpoint):
        return None  # select_backend names the missing file
    return str(cached_stream_onnx(checkpoint))


@cli_entry
def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _ArgumentError as e:
        print(f"run_pipeline: error: {e}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level)
    cfg = config_from_args(args)
    check_outputs(cfg, args.stats_json)  # host names, folders, free space: before anything is opened
    checked = precheck(cfg)  # outputs, files, devices, GStreamer elements: before a model is loaded
    onnx = cpu_onnx_model(args.backend, args.model, args.device)
    if onnx is not None:
        backend, reason = select_backend("onnxruntime", onnx, device="cpu")
        reason = (f"auto: no CUDA GPU -> ONNX Runtime on the checkpoint's cached export {onnx} "
                  "(faster than PyTorch on a CPU; --backend torch to run the checkpoint itself)")
    else:
        backend, reason = select_backend(args.backend, args.model, device=args.device, precision=args.precision,
                                         cuda_graphs=not args.no_cuda_graphs, trt_plugins=args.trt_plugins)
    log.info("backend choice: %s", reason)
    pipe = Pipeline(cfg, backend, backend_reason=reason, checked=checked)

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if pipe.stop_event.is_set():
            pipe.hurry(name)  # a second one: drop what is queued, finalise the output now (bounded)
        else:
            pipe.stop(name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = pipe.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        backend.close()
    json_to_stdout = args.stats_json == "-"
    print(format_summary(summary), file=sys.stderr if json_to_stdout else sys.stdout, flush=True)
    if args.stats_json:
        if json_to_stdout:  # stdout holds the JSON only (the summary went to stderr)
            print(json.dumps(summary, indent=2), flush=True)
        else:
            write_json(summary, args.stats_json)
            log.info("statistics written to %s", args.stats_json)
    if summary["errors"]:
        print(f"error: {summary['errors'][0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
