"""``moefusion-eval``: fusion quality of one or more methods on a paired IR/VIS folder.

    moefusion-eval --data ROOT [--methods average,max,laplacian,gff,model] [--model PATH]
                   [--metrics EN,SD,...] [--convention default|published] [--limit N]
                   [--json F] [--csv F] [--sheet F.png] [--sheet-rows N]
    moefusion-eval --temporal (--data ROOT | --ir-video A.mp4 --vis-video B.mp4) [--max-frames N]
                   [--methods model,stream,laplacian,gff,average] [--model PATH] [--markdown F.md] [--json F]
    moefusion-eval --heldout [--model PATH] [--config YAML] [--unseen DIR ...] [--unseen-limit N]
                   [--methods ...] [--metrics ...] [--limit N] [--markdown F.md] [--sheet-dir DIR]
    moefusion-eval --routing-report [--model PATH] [--config YAML] [--limit N] [--markdown F.md] [--maps F.png]

ROOT holds ``ir/`` and ``vis/``; images are paired by file stem (``ir/0001.png`` with
``vis/0001.jpg``). Eval refuses rather than skips: an unpaired id, a pair whose sizes differ or an
unreadable file stops it before any work with a one-line error naming the file (exit 2), as do an
unknown metric or method name.

Methods: the classical baselines of :mod:`moefusion.eval.baselines` (average, max, laplacian,
gff), ``model`` (the ``--model`` file, or the bundled default weights without ``--model``),
``model:PATH`` (any number of them: checkpoints, .onnx or .engine files, through
``moefusion.load``), with ``--temporal`` ``stream`` and ``stream:PATH`` (that model in stream mode,
a fresh ``model.stream()`` per sequence; ``model`` fuses each frame alone) and ``fused:DIR`` (fused images already on disk, e.g. another method's
published results, named by the same ids). Baselines fuse IR and the visible luminance in [0, 1];
their output is rounded to 8 bits as a saved image would be. The model gets the raw frames and
returns an image like VIS. Metrics are computed on luminance, 0..255 (see
:mod:`moefusion.eval.metrics`); IR goes through :func:`moefusion.data.preprocess.ir_to_unit`
(16-bit IR: percentile AGC) and VIS through ``split_visible`` (BT.601 luminance).

A method that fails on an image (an exception in its fusion, or in one metric) is reported for
that image, in the table's ``ok`` count, the CSV/JSON ``error`` field and on stderr; the other
images and methods are still evaluated and all outputs are written. The exit status is then 1.
Exit 0: every method evaluated on every image. Exit 2: bad input (nothing evaluated).

``--heldout``: the same evaluation on the pairs a checkpoint never trained on, rebuilt from its
training config (saved in the checkpoint, or ``--config``; :mod:`moefusion.eval.heldout`), plus
the first ``--unseen-limit`` pairs of each ``--unseen`` folder; one table of means per set.
``--routing-report``: per MoE layer of a checkpoint, on the same held-out pairs, how often each
expert is chosen and how far the fused image moves when the layer runs experts it did not choose or
is zeroed; the attention inside and outside labelled boxes and the effect of a uniform attention;
the person-minus-surround contrast (:mod:`moefusion.eval.ablation`).
``--temporal``: the pairs of ROOT in natural id order (or two synchronised video files) are a video;
per method, flicker excess, warping error and brightness pumping with motion compensated by the
sources' optical flow, beside the raw frame-to-frame change (:mod:`moefusion.eval.temporal`);
``model`` and ``stream`` side by side show what the stream mode changes.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

import moefusion

from ..errors import UserError, cli_entry
from . import metrics as _metrics
from . import report
from .runner import (
    DEFAULT_BASELINES,
    Method,
    _one_line,
    check_pairs,
    evaluate,
    find_pairs,
    no_stream_methods,
    parse_methods,
)
from .temporal import (
    MAX_FRAMES,
    format_table,
    measure_sequence,
    method_fuser,
    open_sequence,
    results_json,
)

SHEET_ROWS = 8
HELDOUT_METHODS = "model,average,max,laplacian,gff"
HELDOUT_METRICS = "EN,SD,SF,AG,MI,SCD,VIF,Qabf,SSIM"
TEMPORAL_METHODS = "model,stream,laplacian,gff,average"
UNSEEN = ["../shared/data/llvip_samples"]  # never used in training (the bundled weights' config)
UNSEEN_LIMIT = 12
MAP_ROWS = 8  # one row per held-out set (there are 7 with the bundled config and llvip)
# The options of each mode; any other option given with the mode is an error.
MODE_OPTIONS = {
    "data": {"data", "methods", "model", "metrics", "convention", "limit", "json", "csv", "sheet", "sheet_rows"},
    "temporal": {"temporal", "data", "ir_video", "vis_video", "max_frames", "methods", "model", "markdown", "json"},
    "heldout": {"heldout", "model", "config", "unseen", "unseen_limit", "methods", "metrics", "convention", "limit",
                "markdown", "sheet_dir", "sheet_rows"},
    "routing_report": {"routing_report", "model", "config", "limit", "markdown", "maps"},
}


def load_model(m: Method):
    """moefusion.load(path); a missing loader/backend becomes a one-line error."""
    what = m.model_path or "the bundled default weights"
    try:
        model = moefusion.load(m.model_path)
    except (ImportError, AttributeError, NotImplementedError) as e:
        raise UserError(f"method {m.label!r}: cannot load {what}: {type(e).__name__}: {_one_line(e)}") from None
    if not callable(getattr(model, "fuse", None)):
        raise UserError(f"method {m.label!r}: moefusion.load({what}) returned an object without fuse()")
    return model


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moefusion-eval",
        description="Fusion quality metrics (EN, SD, SF, AG, MI, SCD, VIF, Qabf, Nabf, SSIM, MS-SSIM, PSNR, CC) "
        "of the model and classical baselines on a paired folder ROOT/ir + ROOT/vis (--data), on the pairs a "
        "checkpoint never trained on (--heldout), or a report of its routing and attention (--routing-report).",
        epilog="Exit status: 0 all evaluated; 1 some method failed on some image (all results still written); "
        "2 bad input. Metric conventions: docs/metrics.md; the routing report: docs/model.md.",
    )
    mode = p.add_argument_group("what to evaluate (exactly one)")
    mode.add_argument("--data", metavar="ROOT", help="folder with ir/ and vis/, paired by file stem")
    mode.add_argument("--heldout", action="store_true",
                      help="the pairs the --model checkpoint never trained on, rebuilt from its training config "
                           "(every data.val root, the seeded data.val_fraction of each training root, excluded "
                           "video clips), plus --unseen folders; one table of means per set")
    mode.add_argument("--routing-report", action="store_true",
                      help="per MoE layer of the --model checkpoint on its held-out pairs: expert usage, distinct "
                           "expert sets, change of the fused image when the layer runs experts it did not choose "
                           "or is zeroed; attention inside/outside labelled boxes and the change with a uniform "
                           "attention; person-minus-surround contrast (grey levels)")
    mode.add_argument("--temporal", action="store_true",
                      help="the --data pairs in natural id order, or --ir-video/--vis-video, are a video: per "
                           "method, flicker excess, warping error and pumping (motion compensated by the sources' "
                           "optical flow) beside the raw frame-to-frame change (docs/metrics.md; default methods "
                           f"{TEMPORAL_METHODS})")
    p.add_argument("--methods", metavar="LIST",
                   help="comma-separated: average, max, laplacian, gff, model, model:PATH, fused:DIR "
                        "(fused images already on disk, named like the pairs), and with --temporal stream, "
                        "stream:PATH (the model in stream mode: temporal state carried from frame to frame; "
                        "model fuses each frame alone) (default: "
                        f"{','.join(DEFAULT_BASELINES)}, plus model when --model is given; with --heldout: "
                        f"{HELDOUT_METHODS})")
    p.add_argument("--model", metavar="PATH", help="checkpoint, .onnx or .engine for method 'model' "
                   "(without it, 'model' is the bundled default weights); --routing-report needs a checkpoint")
    p.add_argument("--metrics", metavar="LIST", help="comma-separated, case-insensitive (default: all: "
                   f"{','.join(_metrics.METRICS)}; with --heldout: {HELDOUT_METRICS})")
    p.add_argument("--convention", metavar="|".join(_metrics.CONVENTIONS),
                   help="'published' reproduces the MMIF-CDDFuse evaluator's conventions (MI sum in nats, "
                        "SSIM sum, VIF sum, ...) for comparison with published tables (default: default)")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate only the first N pairs (natural order "
                   "of ids); with --heldout the first N of each set, with --routing-report N spread over each set")
    p.add_argument("--json", metavar="FILE", help="write per-image and mean results as JSON")
    p.add_argument("--csv", metavar="FILE", help="write per-image and mean rows as CSV")
    p.add_argument("--sheet", metavar="FILE.png", help="write a contact sheet: rows = images, columns = IR, VIS, each method")
    p.add_argument("--sheet-rows", type=_positive_int, metavar="N",
                   help=f"images on each contact sheet (default {SHEET_ROWS})")
    video = p.add_argument_group("--temporal")
    video.add_argument("--ir-video", metavar="FILE", help="IR video file (with --vis-video, instead of --data)")
    video.add_argument("--vis-video", metavar="FILE", help="visible video file, frame-synchronised with --ir-video")
    video.add_argument("--max-frames", type=_positive_int, metavar="N",
                       help=f"use at most the first N frames (default {MAX_FRAMES})")
    held = p.add_argument_group("--heldout, --routing-report, --temporal")
    held.add_argument("--config", metavar="YAML", help="the training config whose held-out pairs to use (default: "
                      "the one saved in the checkpoint; edge.yaml for .onnx/.engine files)")
    held.add_argument("--unseen", nargs="*", metavar="DIR", help="--heldout: folders never used in training, "
                      f"evaluated from their first pair (default: {' '.join(UNSEEN)} when it exists; none: --unseen)")
    held.add_argument("--unseen-limit", type=_positive_int, metavar="N",
                      help=f"--heldout: pairs used from each --unseen folder (default {UNSEEN_LIMIT})")
    held.add_argument("--markdown", metavar="FILE.md", help="also write the tables / the report to this file")
    held.add_argument("--sheet-dir", metavar="DIR", help="--heldout: write one contact sheet per set here")
    held.add_argument("--maps", metavar="FILE.png", help="--routing-report: a picture of the first pair of "
                      f"each held-out set (<= {MAP_ROWS} rows of IR | VIS | attention | fused, with the experts chosen)")
    return p


def _mode(args) -> str:
    """The one mode the arguments ask for; an option of another mode is a one-line error."""
    given = {k for k, v in vars(args).items() if v not in (None, False)}
    modes = [m for m in MODE_OPTIONS if m in given and not (m == "data" and "temporal" in given)]
    flag = lambda k: "--" + k.replace("_", "-")
    if len(modes) > 1:
        raise UserError(f"{' and '.join(flag(m) for m in modes)} are different jobs; give one of them")
    if not modes:
        raise UserError("say what to evaluate: --data ROOT, --heldout, --routing-report or --temporal")
    extra = sorted(given - MODE_OPTIONS[modes[0]])
    if extra:
        raise UserError(f"{', '.join(flag(k) for k in extra)} cannot be used with {flag(modes[0])}")
    return modes[0]


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    mode = _mode(args)
    if args.convention is not None and args.convention not in _metrics.CONVENTIONS:
        raise UserError(f"--convention {args.convention!r}: use one of {', '.join(_metrics.CONVENTIONS)}")
    args.convention = args.convention or "default"
    args.sheet_rows = args.sheet_rows or SHEET_ROWS
    if mode == "heldout":
        return main_heldout(args)
    if mode == "routing_report":
        return main_routing_report(args)
    if mode == "temporal":
        return main_temporal(args)
    return main_data(args)


def main_data(args) -> int:
    metric_names = _metrics.resolve_names(args.metrics) if args.metrics is not None else list(_metrics.METRICS)
    methods = parse_methods(args.methods, args.model)
    no_stream_methods(methods, "--data")
    outputs = {}
    for flag, value in (("--json", args.json), ("--csv", args.csv), ("--sheet", args.sheet)):
        if value:
            path = Path(value)
            if flag == "--sheet" and path.suffix.lower() != ".png":
                raise UserError(f"--sheet {value}: the contact sheet is a PNG; give a file name ending in .png")
            report.check_output_path(path, flag)
            outputs[flag] = path
    root = Path(args.data)
    pairs = find_pairs(root)
    if args.limit:
        pairs = pairs[: args.limit]
    check_pairs(pairs)
    _load_models(methods)

    progress = None
    if sys.stderr.isatty():
        def progress(i, pair):
            print(f"\r[{i + 1}/{len(pairs)}] {pair.id}   ", end="", file=sys.stderr, flush=True)

    sheet_rows = args.sheet_rows if "--sheet" in outputs else 0
    rows, sheet = evaluate(pairs, methods, metric_names, args.convention, sheet_rows, progress)
    if progress:
        print(file=sys.stderr)

    labels = [m.label for m in methods]
    mean = report.means(rows, labels, metric_names)
    hib = {k: _metrics.METRICS[k].higher_is_better for k in metric_names}
    failures = [r for r in rows if r.error]
    if "--json" in outputs:
        summary = {
            "data": str(root),
            "convention": args.convention,
            "metrics": metric_names,
            "higher_is_better": hib,
            "methods": labels,
            "images": [p.id for p in pairs],
            "failures": len(failures),
        }
        report.atomic_write_text(outputs["--json"], report.to_json(summary, rows, mean, metric_names))
    if "--csv" in outputs:
        report.atomic_write_text(outputs["--csv"], report.to_csv(rows, mean, metric_names))
    if "--sheet" in outputs:
        img = report.contact_sheet(sheet, ["IR", "VIS"] + _short_labels(methods))
        report.atomic_write_bytes(outputs["--sheet"], report.encode_png(img))

    print(f"{len(pairs)} image pairs from {root}, convention '{args.convention}' (means over the images each method handled)")
    print(report.format_table(mean, metric_names, hib))
    return _report_failures(failures, len(rows))


def _load_models(methods: list[Method]) -> None:
    loaded = {}  # model and stream of one file share one loaded model
    for m in methods:
        if m.is_model:
            if m.model_path not in loaded:
                loaded[m.model_path] = load_model(m)
            m.model = loaded[m.model_path]


def _short_labels(methods: list[Method]) -> list[str]:
    return [f"model:{Path(m.model_path).name}" if m.label.startswith("model:") else m.label for m in methods]


def _report_failures(failures, total: int) -> int:
    if not failures:
        return 0
    print(f"{len(failures)} of {total} (image, method) evaluations failed:", file=sys.stderr)
    for r in failures[:10]:
        print(f"  {r.image} / {r.method}: {r.error}", file=sys.stderr)
    if len(failures) > 10:
        print(f"  ... and {len(failures) - 10} more (see the error column of --csv / --json)", file=sys.stderr)
    return 1


def main_temporal(args) -> int:
    methods = parse_methods(args.methods or TEMPORAL_METHODS, args.model)
    for m in methods:
        if m.fused_dir is not None:
            raise UserError(f"method {m.label!r}: --temporal fuses each frame itself; fused:DIR is not supported")
    outputs = {flag: Path(v) for flag, v in (("--markdown", args.markdown), ("--json", args.json)) if v}
    for flag, path in outputs.items():
        report.check_output_path(path, flag)
    count = args.max_frames or MAX_FRAMES
    frames, what = open_sequence(args.data, args.ir_video, args.vis_video, count)
    _load_models(methods)

    def progress(n):
        if sys.stderr.isatty():
            print(f"\rframe {n + 1}   ", end="", file=sys.stderr, flush=True)

    results = measure_sequence(frames, {m.label: method_fuser(m) for m in methods}, count, progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if min(r["frames"] for r in results.values()) < 2 and not any("error" in r for r in results.values()):
        raise UserError(f"{what}: fewer than 2 frames; the temporal measures need a sequence")
    title = (f"Temporal measures on {what}, grey levels of the fused luminance, lower is steadier: "
             "flicker_excess, warping_error, pumping motion-compensated (docs/metrics.md); change, "
             "brightness_sd, change_excess raw frame to frame.")
    if "--markdown" in outputs:
        report.atomic_write_text(outputs["--markdown"], f"{title}\n\n{format_table(results, markdown=True)}\n")
    if "--json" in outputs:
        report.atomic_write_text(outputs["--json"], results_json(what, results))
    print(title)
    print(format_table(results))
    failed = {label: r["error"] for label, r in results.items() if "error" in r}
    for label, e in failed.items():
        print(f"{label}: failed at {e}", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# --heldout and --routing-report
# --------------------------------------------------------------------------------------------
def _training_config(args) -> tuple[dict, str]:
    """(the training config whose held-out pairs to use, how it was found)."""
    # Imported here, not at the top: torch and the training package cost moefusion-eval --data
    # (which needs neither) about 3 s of start-up (measured, 2-core VM).
    from ..model.checkpoint import read_checkpoint
    from ..train.config import load_config

    path = args.model
    if path is not None and not Path(path).is_file():
        raise UserError(f"model file not found: {path}")
    saved = None
    if not args.config and (path is None or Path(path).suffix == ".pt"):
        saved = read_checkpoint(path or str(_default_weights()))["meta"].get("train_config")
    if args.config or not saved:
        name = args.config or "edge.yaml"
        return load_config(name, []), f"config `{name}`"
    return saved, "the training config saved in the checkpoint"


def _default_weights() -> Path:
    from ..model.checkpoint import default_weights  # torch: see _training_config

    return default_weights()


def _heldout_sets(cfg: dict):
    from .heldout import heldout_sets  # torch: see _training_config

    try:
        return heldout_sets(cfg)
    except (KeyError, TypeError) as e:
        raise UserError(f"the training config has no usable data section ({type(e).__name__}: {e})") from None


def main_heldout(args) -> int:
    from . import heldout  # torch: see _training_config

    metric_names = _metrics.resolve_names(args.metrics or HELDOUT_METRICS)
    methods = parse_methods(args.methods or HELDOUT_METHODS, args.model)
    no_stream_methods(methods, "--heldout")
    outputs = {}
    if args.markdown:
        outputs["markdown"] = Path(args.markdown)
        report.check_output_path(outputs["markdown"], "--markdown")
    cfg, where = _training_config(args)
    sets = _heldout_sets(cfg)
    unseen = args.unseen if args.unseen is not None else [u for u in UNSEEN if Path(u).is_dir()]
    for root in unseen:
        if not Path(root).is_dir():
            raise UserError(f"--unseen {root}: no such folder")
    sets += heldout.unseen_sets(unseen, args.unseen_limit or UNSEEN_LIMIT)
    if not sets:
        raise UserError(f"{where} holds out no pairs and no --unseen folder is given: nothing to evaluate")
    _load_models(methods)

    def progress(name):
        print(f"evaluating {name} ...", file=sys.stderr, flush=True)

    sheet_rows = args.sheet_rows if args.sheet_dir else 0
    results = heldout.evaluate_sets(sets, methods, metric_names, args.convention, args.limit, sheet_rows, progress)
    title = (f"Held-out evaluation of `{args.model or 'the bundled default weights'}` ({where}), metrics in the "
             f"'{args.convention}' convention of docs/metrics.md (mean over images).")
    text = heldout.markdown(results, metric_names, title)
    if args.sheet_dir:
        folder = Path(args.sheet_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for n, r in enumerate(results):
            img = report.contact_sheet(r.sheet, ["IR", "VIS"] + _short_labels(methods))
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", r.name).strip("_")
            report.atomic_write_bytes(folder / f"heldout_{n}_{slug}.png", report.encode_png(img))
    if "markdown" in outputs:
        report.atomic_write_text(outputs["markdown"], text + "\n")
    print(text)
    failures = [row for r in results for row in r.failures]
    return _report_failures(failures, sum(r.images for r in results) * len(methods))


def main_routing_report(args) -> int:
    from ..model.checkpoint import (  # torch: see _training_config
        model_from_checkpoint,
        read_checkpoint,
    )
    from .ablation import format_report, routing_report

    path = args.model or str(_default_weights())
    if Path(path).suffix != ".pt":
        raise UserError(f"--routing-report needs a checkpoint (.pt), got {path}: ONNX and TensorRT engines "
                        "cannot change their routing")
    outputs = {}
    for flag, value in (("--markdown", args.markdown), ("--maps", args.maps)):
        if value:
            outputs[flag] = Path(value)
            if flag == "--maps" and outputs[flag].suffix.lower() != ".png":
                raise UserError(f"--maps {value}: the attention maps are a PNG; give a file name ending in .png")
            report.check_output_path(outputs[flag], flag)
    cfg, where = _training_config(args)
    sets = _heldout_sets(cfg)
    if not sets:
        raise UserError(f"{where} holds out no pairs: nothing to report on")
    model = model_from_checkpoint(read_checkpoint(path))

    def progress(name, pair_id):
        if sys.stderr.isatty():
            print(f"\r{name}: {pair_id}   ", end="", file=sys.stderr, flush=True)

    rep = routing_report(model, sets, args.limit, MAP_ROWS if "--maps" in outputs else 0, progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    text = format_report(rep, f"Routing and attention of `{path}` on its held-out pairs ({where}).")
    if "--markdown" in outputs:
        report.atomic_write_text(outputs["--markdown"], text + "\n")
    if "--maps" in outputs and rep.maps:
        report.atomic_write_bytes(outputs["--maps"], report.encode_png(np.vstack(rep.maps)))
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
