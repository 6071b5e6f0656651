"""``moefusion-bench`` (also ``python -m moefusion.bench``): speed of every backend x precision x size x preset.

    moefusion-bench                                              # every backend, both presets, 640x480
    moefusion-bench --presets edge --backends torch onnxruntime --imgsz 240 320 --iters 20
    moefusion-bench --device cuda --batch 8 --json bench.json --markdown bench.md --plot bench.png
    moefusion-bench --presets edge --backends tensorrt --precisions fp16 --min-fps 30   # regression gate
    moefusion-bench --presets edge paper --flops --backends torch --precisions fp32 --no-pipeline  # + GFLOP, params
    moefusion-bench --presets edge --backends onnxruntime --precisions fp32 --overhead      # the pipeline's own cost
    moefusion-bench --compare old.onnx new.onnx --iters 16         # A/B, timed alternately, as a ratio

Each preset and size gets a reference row (PyTorch, the dispatch as published, eager, fp32); every
speed-up is a ratio to it from the same run. A backend that cannot run here, or fails, shows why in
the status column and the run goes on. Exit status: 0; 1 when a row failed (status "error...") or a
row is below --min-fps; 2 for a bad argument or conflicting flags (one line naming them).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from .. import files
from ..errors import UserError, cli_entry
from ..export.formats import parse_hw
from ..model.presets import list_presets
from . import report
from .compare import check_model_file, compare_lines, compare_markdown, run_compare
from .run import Settings, checkpoint_preset, run_benchmark
from .table import DEFAULT_WARMUP, DEVICES, PRECISIONS, backends

DEFAULT_IMGSZ = (480, 640)
MIN_FPS_OF = ("model", "pipeline")


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line and exit 2 (UserError), like every moefusion command."""

    def error(self, message):
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    table = backends()
    rows = "\n".join(f"  {b.name:14s} {'/'.join(b.precisions):10s} {'/'.join(b.devices):9s} {b.description}"
                     for b in table.values())
    p = _Parser(
        prog="moefusion-bench",
        description="Model-only latency and throughput, and end-to-end pipeline FPS, for every backend x precision x "
                    "size x preset in one run, with speed-ups against the as-published reference dispatch.",
        epilog=f"backends (precisions, devices):\n{rows}\n\n"
               "Untrained models are built from the presets (speed does not depend on training); the edge preset uses "
               "the bundled default weights when they exist. See docs/benchmark.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backends", nargs="+", metavar="NAME",
                   help=f"backends to measure (default: all of {', '.join(table)}; those that cannot run here show why)")
    p.add_argument("--presets", nargs="+", metavar="NAME", help="model presets (default: edge paper)")
    p.add_argument("--precisions", nargs="+", metavar="P", help="fp32 and/or fp16 (default: both)")
    p.add_argument("--imgsz", nargs="+", action="append", metavar="PX",
                   help="input height and width, H W (or HxW); repeat for several sizes (default 480 640)")
    p.add_argument("--batch", type=int, metavar="N", help="batch for the throughput column (default 1 on the CPU, 8 on a GPU)")
    p.add_argument("--iters", type=int, metavar="N",
                   help="timed iterations per measurement, and pipeline frames (default: adapt to --budget, at least 3)")
    p.add_argument("--warmup", type=int, metavar="N", help="untimed calls before timing (default 2 on the CPU, 10 on a GPU)")
    p.add_argument("--budget", type=float, default=5.0, metavar="S",
                   help="seconds per measurement when --iters is not given (default 5)")
    p.add_argument("--frames", type=int, metavar="N", help="pipeline frames per row (default: --iters, or adapt to --budget)")
    p.add_argument("--no-pipeline", action="store_true", help="model-only: skip the end-to-end pipeline runs")
    p.add_argument("--flops", action="store_true",
                   help="also count FLOPs per frame (torch.utils.flop_counter, 2 per multiply-add) and parameters of "
                        "each preset's model at each size: the GFLOP column")
    p.add_argument("--overhead", action="store_true",
                   help="the pipeline's own cost: a no-model row (the runtime's average of the inputs: the "
                        "pipeline's ceiling) and, per row, the wall and CPU time per frame outside the model")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="A/B instead of the table: two model files (.onnx: ONNX Runtime; .pt: PyTorch; .engine: "
                        "TensorRT) timed alternately in one process on the same frame, reported as B/A ratios "
                        "(--iters: rounds; --imgsz: the size for dynamic models)")
    p.add_argument("--device", default="auto", metavar="cpu|cuda", help="auto (default: cuda when present), cpu or cuda")
    p.add_argument("--weights", metavar="W.pt", help="benchmark this checkpoint instead of the presets")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads for PyTorch and ONNX Runtime (default: their own default)")
    out = p.add_argument_group("outputs")
    out.add_argument("--json", metavar="FILE", help="write the results (every sample statistic, machine, load) as JSON")
    out.add_argument("--markdown", metavar="FILE", help="write the report (command, machine, load, table) as Markdown")
    out.add_argument("--plot", metavar="FILE.png", help="write a bar chart of model and pipeline FPS (needs matplotlib)")
    gate = p.add_argument_group("regression check")
    gate.add_argument("--min-fps", type=float, metavar="X",
                      help="exit 1 when a measured row (the reference excepted) is below X frames/s")
    gate.add_argument("--min-fps-of", metavar="model|pipeline",
                      help="which FPS --min-fps checks: model (the FPS column, default) or pipeline")
    p.add_argument("-v", "--verbose", action="store_true", help="log exports and pipeline runs")
    return p


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

def _names(values, flag: str, allowed, hint: str = "") -> list[str] | None:
    if values is None:
        return None
    out: list[str] = []
    for v in values:
        for name in (x.strip() for x in v.split(",")):
            if not name:
                continue
            if name not in allowed:
                raise UserError(f"{flag} {name}: unknown; use one of {', '.join(allowed)}{hint}")
            if name not in out:
                out.append(name)
    if not out:
        raise UserError(f"{flag}: give at least one of {', '.join(allowed)}")
    return out


def _sizes(values) -> list[tuple[int, int]]:
    if not values:
        return [DEFAULT_IMGSZ]
    sizes = []
    for v in values:
        if len(v) == 2:
            text = f"{v[0]}x{v[1]}"
        elif len(v) == 1:
            text = v[0]
        else:
            raise UserError(f"--imgsz {' '.join(v)}: give H W (or HxW), e.g. --imgsz 480 640")
        try:
            size = parse_hw(text, "--imgsz")
        except UserError:
            raise UserError(f"--imgsz {' '.join(v)}: expected positive H W, e.g. --imgsz 480 640") from None
        if size not in sizes:
            sizes.append(size)
    return sizes


def _positive(value, flag: str, minimum=1):
    if value is not None and value < minimum:
        raise UserError(f"{flag} {value}: must be at least {minimum}")
    return value


def _resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise UserError(f"--device {device}: unknown; use one of {', '.join(DEVICES)}")
    import torch

    have = torch.cuda.is_available()
    if device == "cuda" and not have:
        raise UserError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
    if device == "auto":
        return "cuda" if have else "cpu"
    return device


def _check_output(path: str | None, flag: str, suffix: str | None = None) -> None:
    if path is None:
        return
    if suffix and Path(path).suffix.lower() != suffix:
        raise UserError(f"{flag} {path}: name it {Path(path).with_suffix(suffix).name} (a {suffix[1:].upper()} file)")
    try:
        files.check_writable(path)
    except UserError as e:
        raise UserError(f"{flag} {e}") from None


def settings_from_args(args, argv) -> Settings:
    table = backends()
    names = _names(args.backends, "--backends", list(table))
    presets = _names(args.presets, "--presets", list_presets())
    precisions = _names(args.precisions, "--precisions", list(PRECISIONS),
                        hint=" (INT8 needs calibration data: build an engine with moefusion-export --format engine "
                             "--int8 and time it with run_pipeline --model X.engine)")
    sizes = _sizes(args.imgsz)
    for v, flag in ((args.batch, "--batch"), (args.iters, "--iters"), (args.frames, "--frames")):
        _positive(v, flag)
    _positive(args.warmup, "--warmup", 0)
    _positive(args.threads, "--threads", 0)
    if not args.budget > 0:
        raise UserError(f"--budget {args.budget}: must be a positive number of seconds")
    if args.min_fps is not None and not args.min_fps > 0:
        raise UserError(f"--min-fps {args.min_fps}: must be a positive number of frames per second")
    if args.min_fps_of is not None and args.min_fps_of not in MIN_FPS_OF:
        raise UserError(f"--min-fps-of {args.min_fps_of}: unknown; use one of {', '.join(MIN_FPS_OF)}")
    if args.no_pipeline and args.frames is not None:
        raise UserError("--frames with --no-pipeline: --frames sets the pipeline's frames; drop one of them")
    if args.no_pipeline and args.min_fps is not None and args.min_fps_of == "pipeline":
        raise UserError("--min-fps-of pipeline with --no-pipeline: nothing to check; drop --no-pipeline")
    if args.no_pipeline and args.overhead:
        raise UserError("--overhead with --no-pipeline: the overhead is measured by the pipeline runs; drop one of them")
    weights = args.weights
    if weights is not None:
        if presets is not None:
            raise UserError("--weights with --presets: the checkpoint sets its own preset; drop --presets")
        if not Path(weights).is_file():
            raise UserError(f"--weights {weights}: no such file")
        if Path(weights).suffix.lower() not in (".pt", ".pth", ".ckpt"):
            raise UserError(f"--weights {weights}: expected a moefusion checkpoint (.pt); for an .onnx or .engine "
                            "use run_pipeline --model FILE --output none")
        presets = [checkpoint_preset(weights)]  # UserError naming the file when it is not a checkpoint
    _check_output(args.json, "--json")
    _check_output(args.markdown, "--markdown")
    _check_output(args.plot, "--plot", ".png")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UserError(f"--plot {args.plot}: needs matplotlib (pip install 'moefusion[plot]')")
    device = _resolve_device(args.device)
    return Settings(
        backends=names or list(table), presets=presets or list_presets(), precisions=precisions or list(PRECISIONS),
        sizes=sizes, device=device, batch=args.batch or (8 if device == "cuda" else 1), iters=args.iters,
        warmup=args.warmup, budget_s=args.budget, frames=args.frames, pipeline=not args.no_pipeline, weights=weights,
        threads=args.threads, flops=args.flops, overhead=args.overhead,
        command="moefusion-bench" + ("" if not argv else " " + shlex.join(argv)),
    )


# flags that --compare does not use: they set up the table's rows (refused, not silently ignored)
NOT_WITH_COMPARE = ("backends", "presets", "precisions", "weights", "batch", "frames", "no_pipeline", "flops",
                    "overhead", "plot", "min_fps", "min_fps_of")


def check_compare_args(args) -> tuple[str, list[tuple[int, int]]]:
    """(device, sizes) for --compare, or a one-line UserError naming the conflicting flag."""
    for name in NOT_WITH_COMPARE:
        if getattr(args, name) not in (None, False):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"--compare with {flag}: --compare times two model files as given; drop {flag}")
    sizes = _sizes(args.imgsz) if args.imgsz else []
    if len(sizes) > 1:
        raise UserError("--imgsz with --compare: give one size (both models run on the same frame)")
    for v, flag in ((args.iters, "--iters"),):
        _positive(v, flag)
    _positive(args.warmup, "--warmup", 0)
    _positive(args.threads, "--threads", 0)
    if not args.budget > 0:
        raise UserError(f"--budget {args.budget}: must be a positive number of seconds")
    for path in args.compare:
        check_model_file(path)
    _check_output(args.json, "--json")
    _check_output(args.markdown, "--markdown")
    return _resolve_device(args.device), sizes


def main_compare(args, argv) -> int:
    device, sizes = check_compare_args(args)
    warmup = DEFAULT_WARMUP[device] if args.warmup is None else args.warmup
    result = run_compare(list(args.compare), device=device, sizes=sizes, iters=args.iters, warmup=warmup,
                         budget_s=args.budget, threads=args.threads, command="moefusion-bench " + shlex.join(argv))
    print("\n".join(compare_lines(result)))
    if args.json:
        report.write_json(result, args.json)
    if args.markdown:
        files.atomic_write_text(args.markdown, compare_markdown(result))
    if args.json or args.markdown:
        print("\nwrote " + ", ".join(x for x in (args.json, args.markdown) if x))
    return 0


# ----------------------------------------------------------------------------------------------
# result checks
# ----------------------------------------------------------------------------------------------

def failed_rows(result: dict) -> list[str]:
    """Rows that failed (an error while measuring, not 'unavailable' / 'unsupported')."""
    return [f"{r['preset']} {r['label']} {r['precision']} {r['size_text']}: {r['status']}"
            for r in result["rows"] if "error" in r["status"] and not r["status"].startswith(("unavailable", "unsupported"))]


def below_min_fps(result: dict, minimum: float, of: str = "model") -> list[str]:
    """Rows (the reference excepted) below ``minimum`` FPS, or not measured because they failed."""
    bad, measured = [], 0
    for r in result["rows"]:
        if r["reference"] or r["backend"] == "average" or r["status"].startswith(("unavailable", "unsupported")):
            continue
        name = f"{r['preset']} {r['label']} {r['precision']} {r['size_text']}"
        fps = r["fps"] if of == "model" else (r.get("pipeline") or {}).get("fps")
        if fps is None:
            bad.append(f"{name}: no {of} FPS ({r['status']})")
        elif fps < minimum:
            bad.append(f"{name}: {fps:.2f} FPS")
        else:
            measured += 1
    if not bad and not measured:
        bad.append("no row was measured (every backend unavailable or unsupported here)")
    return bad


@cli_entry
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        # the package logger only: its children (runtime, export) inherit it, and a level set on a
        # child would outlive this call and silence run_pipeline's log in the same process
        logging.getLogger("moefusion").setLevel(logging.WARNING)
    if args.compare:
        return main_compare(args, argv)
    s = settings_from_args(args, argv)
    result = run_benchmark(s)
    print()
    print("\n".join(report.describe_run(result)))
    print()
    print(report.text_table(result))
    written = []
    if args.json:
        report.write_json(result, args.json)
        written.append(args.json)
    if args.markdown:
        report.write_markdown(result, args.markdown)
        written.append(args.markdown)
    if args.plot:
        report.write_plot(result, args.plot)
        written.append(args.plot)
    if written:
        print("\nwrote " + ", ".join(written))
    status = 0
    failed = failed_rows(result)
    if failed:
        print(f"moefusion-bench: {len(failed)} row(s) failed: " + "; ".join(failed), file=sys.stderr)
        status = 1
    if args.min_fps is not None:
        of = args.min_fps_of or "model"
        bad = below_min_fps(result, args.min_fps, of)
        if bad:
            print(f"moefusion-bench: below --min-fps {args.min_fps:g} ({of} FPS): " + "; ".join(bad),
                  file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
