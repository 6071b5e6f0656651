"""``moefusion-eval``: fusion quality of one or more methods on a paired IR/VIS folder.

    moefusion-eval --data ROOT [--methods average,max,laplacian,gff,model] [--model PATH]
                   [--metrics EN,SD,...] [--convention default|published] [--limit N]
                   [--json F] [--csv F] [--sheet F.png] [--sheet-rows N] [--temporal]

ROOT holds ``ir/`` and ``vis/``; images are paired by file stem (``ir/0001.png`` with
``vis/0001.jpg``). Eval refuses rather than skips: an unpaired id, a pair whose sizes differ or an
unreadable file stops it before any work with a one-line error naming the file (exit 2), as do an
unknown metric or method name.

Methods: the classical baselines of :mod:`moefusion.eval.baselines` (average, max, laplacian,
gff), ``model`` (the ``--model`` file, or the bundled default weights without ``--model``),
``model:PATH`` (any number of them: checkpoints, .onnx or .engine files, through
``moefusion.load``) and ``fused:DIR`` (fused images already on disk, e.g. another method's
published results, named by the same ids). Baselines fuse IR and the visible luminance in [0, 1];
their output is rounded to 8 bits as a saved image would be. The model gets the raw frames and
returns an image like VIS. Metrics are computed on luminance, 0..255 (see
:mod:`moefusion.eval.metrics`); IR goes through :func:`moefusion.data.preprocess.ir_to_unit`
(16-bit IR: percentile AGC) and VIS through ``split_visible`` (BT.601 luminance).

A method that fails on an image (an exception in its fusion, or in one metric) is reported for
that image, in the table's ``ok`` count, the CSV/JSON ``error`` field and on stderr; the other
images and methods are still evaluated and all outputs are written. The exit status is then 1.
Exit 0: every method evaluated on every image. Exit 2: bad input (nothing evaluated).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.io import read_image
from ..data.pairs import Pair, pair_folders, scan_images
from ..data.preprocess import ir_to_unit, merge_visible, split_visible
from ..errors import UserError, cli_entry
from . import baselines as _baselines
from . import metrics as _metrics
from . import report
from .temporal import TEMPORAL_METRICS, TemporalStats

DEFAULT_BASELINES = ("average", "max", "laplacian", "gff")
SHEET_ROWS = 8


# --------------------------------------------------------------------------------------------
# the paired folder
# --------------------------------------------------------------------------------------------
def find_pairs(root: Path) -> list[Pair]:
    """ROOT/ir and ROOT/vis -> pairs sorted by id (natural order). Refuses unpaired ids."""
    if not root.is_dir():
        raise UserError(f"--data {root}: no such folder")
    for sub in ("ir", "vis"):
        if not (root / sub).is_dir():
            raise UserError(f"--data {root}: no {sub}/ folder; expected ROOT/ir/ and ROOT/vis/ with images paired by file name")
    return pair_folders(root / "ir", root / "vis")


def check_pairs(pairs: list[Pair]) -> None:
    """Read every pair once: unreadable files and size mismatches stop the run before any work."""
    for p in pairs:
        a, b = read_image(p.ir), read_image(p.vis)
        if a.shape[:2] != b.shape[:2]:
            raise UserError(
                f"size mismatch for id {p.id!r}: {p.ir} is {a.shape[1]}x{a.shape[0]} but {p.vis} is "
                f"{b.shape[1]}x{b.shape[0]}; eval needs registered pairs of the same size (resize or register them first)"
            )
        for path, img, convert in ((p.ir, a, ir_to_unit), (p.vis, b, split_visible)):
            try:
                convert(img)
            except UserError as e:
                raise UserError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------
@dataclass
class Method:
    label: str
    baseline: object = None  # a function (ir_unit, vis_y) -> fused y, or None
    model_path: str | None = None
    model: object = None
    fused_dir: dict[str, Path] | None = None  # fused:DIR: id -> fused image file

    @property
    def is_model(self) -> bool:
        return self.baseline is None and self.fused_dir is None


def parse_methods(spec: str | None, model_arg: str | None) -> list[Method]:
    valid = ", ".join(list(_baselines.BASELINES) + ["model", "model:PATH", "fused:DIR"])
    if spec is None:
        names = list(DEFAULT_BASELINES) + (["model"] if model_arg else [])
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        if not names:
            raise UserError(f"--methods is empty; valid methods: {valid}")
    out: list[Method] = []
    for n in names:
        if n in _baselines.BASELINES:
            m = Method(n, baseline=_baselines.BASELINES[n])
        elif n.lower() in _baselines.BASELINES:
            m = Method(n.lower(), baseline=_baselines.BASELINES[n.lower()])
        elif n == "model":
            m = Method("model", model_path=model_arg)
        elif n.startswith("model:"):
            path = n[len("model:"):].strip()
            if not path:
                raise UserError("method 'model:' needs a path, e.g. model:runs/best.onnx")
            m = Method(n, model_path=path)
        elif n.startswith("fused:"):
            folder = Path(n[len("fused:"):].strip())
            if not folder.is_dir():
                raise UserError(f"method {n!r}: no such folder {folder} (fused:DIR reads fused images named like the pairs)")
            m = Method(n, fused_dir=scan_images(folder))
        else:
            raise UserError(f"unknown method {n!r}; valid methods: {valid}")
        if any(o.label == m.label for o in out):
            raise UserError(f"method {m.label!r} is listed twice in --methods")
        out.append(m)
    if model_arg and spec is not None and not any(m.label == "model" for m in out):
        raise UserError("--model is given but --methods does not list 'model'; add it (or use model:PATH)")
    for m in out:
        if m.is_model and m.model_path is not None and not Path(m.model_path).exists():
            raise UserError(f"model file not found: {m.model_path} (method {m.label!r})")
    return out


def load_model(m: Method):
    """moefusion.load(path) (lazy import); a missing loader/backend becomes a one-line error."""
    what = m.model_path or "the bundled default weights"
    try:
        import moefusion

        model = moefusion.load(m.model_path)
    except (ImportError, AttributeError, NotImplementedError) as e:
        raise UserError(f"method {m.label!r}: cannot load {what}: {type(e).__name__}: {_one_line(e)}") from None
    if not callable(getattr(model, "fuse", None)):
        raise UserError(f"method {m.label!r}: moefusion.load({what}) returned an object without fuse()")
    return model


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def _fuse(m: Method, pair_id: str, ir_raw, vis_raw, ir_u, parts):
    """-> (fused luminance float64 0..255, display image) for one method on one pair."""
    h, w = parts.y.shape
    if m.baseline is not None:
        y = np.asarray(m.baseline(ir_u, parts.y), dtype=np.float32)
        if y.shape != (h, w):
            raise ValueError(f"returned shape {y.shape}, expected {(h, w)}")
        y = np.clip(np.nan_to_num(y), 0.0, 1.0)
        y255 = np.rint(y.astype(np.float64) * 255.0)  # as a saved 8-bit image
        return y255, merge_visible((y255 / 255.0).astype(np.float32), parts)
    if m.fused_dir is not None:
        path = m.fused_dir.get(pair_id)
        if path is None:
            raise FileNotFoundError(f"no fused image for id {pair_id!r} in {m.label[len('fused:'):]}")
        out = read_image(path)
    else:
        out = m.model.fuse(ir_raw, vis_raw)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"fuse() returned {type(out).__name__}, expected a numpy array")
    if out.shape[:2] != (h, w):
        raise ValueError(f"fused image is {out.shape[1]}x{out.shape[0]}, expected {w}x{h}")
    return _to255(split_visible(out).y, out.dtype), out


def _to255(unit: np.ndarray, dtype) -> np.ndarray:
    """[0, 1] float32 -> float64 0..255; exact integer levels again for 8-bit sources (float32
    division by 255 leaves values like 126.99999)."""
    x = unit.astype(np.float64) * 255.0
    return np.rint(x) if dtype == np.uint8 else x


def evaluate(pairs, methods, metric_names, convention, sheet_rows, progress=None, temporal=None):
    """Rows of metric values per (image, method) and the contact sheet's tiles; ``temporal``: a dict
    of method label -> TemporalStats fed every fused frame in order (the pairs are a sequence)."""
    rows: list[report.Row] = []
    sheet: list[tuple[str, list]] = []
    for i, pair in enumerate(pairs):
        if progress:
            progress(i, pair)
        ir_raw, vis_raw = read_image(pair.ir), read_image(pair.vis)
        ir_u = ir_to_unit(ir_raw)
        parts = split_visible(vis_raw)
        ir255 = _to255(ir_u, ir_raw.dtype)
        vis255 = _to255(parts.y, vis_raw.dtype)
        tiles = [report.to_display(ir_u), report.to_display(vis_raw)] if i < sheet_rows else None
        for m in methods:
            row = report.Row(pair.id, m.label)
            try:
                fused255, shown = _fuse(m, pair.id, ir_raw, vis_raw, ir_u, parts)
            except Exception as e:  # a method failing on one image must not stop the others
                row.error = f"fusion failed: {type(e).__name__}: {_one_line(e)}"
                if tiles is not None:
                    tiles.append(None)
                rows.append(row)
                continue
            if tiles is not None:
                tiles.append(report.to_display(shown))
            if temporal is not None:
                temporal[m.label].add(fused255, ir255, vis255)
            errors = []
            for k in metric_names:
                try:
                    row.values[k] = _metrics.compute([k], fused255, ir255, vis255, convention=convention)[k]
                except Exception as e:
                    row.values[k] = math.nan
                    errors.append(f"{k}: {_one_line(e)}")
            if errors:
                row.error = "metric failed: " + "; ".join(errors)
            rows.append(row)
        if tiles is not None:
            sheet.append((pair.id, tiles))
    return rows, sheet


def format_temporal(results: dict[str, dict]) -> str:
    head = ["method", *TEMPORAL_METRICS]
    body = [[label] + [f"{r[k]:.4f}" for k in TEMPORAL_METRICS] for label, r in results.items()]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in [head] + body)


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
        "of the model and classical baselines on a paired folder ROOT/ir + ROOT/vis.",
        epilog="Exit status: 0 all evaluated; 1 some method failed on some image (all results still written); "
        "2 bad input. Metric conventions: docs/metrics.md.",
    )
    p.add_argument("--data", required=True, metavar="ROOT", help="folder with ir/ and vis/, paired by file stem")
    p.add_argument("--methods", metavar="LIST",
                   help="comma-separated: average, max, laplacian, gff, model, model:PATH, fused:DIR "
                        "(fused images already on disk, named like the pairs; default: the four baselines, "
                        "plus model when --model is given)")
    p.add_argument("--model", metavar="PATH", help="checkpoint, .onnx or .engine for method 'model' "
                   "(without it, 'model' is the bundled default weights)")
    p.add_argument("--metrics", metavar="LIST", help=f"comma-separated, case-insensitive (default: all: {','.join(_metrics.METRICS)})")
    p.add_argument("--convention", default="default", metavar="|".join(_metrics.CONVENTIONS),
                   help="'published' reproduces the MMIF-CDDFuse evaluator's conventions (MI sum in nats, "
                        "SSIM sum, VIF sum, ...) for comparison with published tables")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate only the first N pairs (natural order of ids)")
    p.add_argument("--json", metavar="FILE", help="write per-image and mean results as JSON")
    p.add_argument("--csv", metavar="FILE", help="write per-image and mean rows as CSV")
    p.add_argument("--sheet", metavar="FILE.png", help="write a contact sheet: rows = images, columns = IR, VIS, each method")
    p.add_argument("--temporal", action="store_true",
                   help="the pairs are a video sequence (natural id order): also report frame-to-frame change, "
                        "brightness spread and change beyond the sources' own (docs/metrics.md)")
    p.add_argument("--sheet-rows", type=_positive_int, default=SHEET_ROWS, metavar="N",
                   help=f"images on the contact sheet (default {SHEET_ROWS})")
    return p


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.convention not in _metrics.CONVENTIONS:
        raise UserError(f"--convention {args.convention!r}: use one of {', '.join(_metrics.CONVENTIONS)}")
    metric_names = _metrics.resolve_names(args.metrics) if args.metrics is not None else list(_metrics.METRICS)
    methods = parse_methods(args.methods, args.model)
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
    for m in methods:
        if m.is_model:
            m.model = load_model(m)

    progress = None
    if sys.stderr.isatty():
        def progress(i, pair):
            print(f"\r[{i + 1}/{len(pairs)}] {pair.id}   ", end="", file=sys.stderr, flush=True)

    sheet_rows = args.sheet_rows if "--sheet" in outputs else 0
    temporal = {m.label: TemporalStats() for m in methods} if args.temporal else None
    rows, sheet = evaluate(pairs, methods, metric_names, args.convention, sheet_rows, progress, temporal)
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
        if temporal is not None:
            summary["temporal"] = {label: t.result() for label, t in temporal.items()}
        report.atomic_write_text(outputs["--json"], report.to_json(summary, rows, mean, metric_names))
    if "--csv" in outputs:
        report.atomic_write_text(outputs["--csv"], report.to_csv(rows, mean, metric_names))
    if "--sheet" in outputs:
        short = [f"model:{Path(m.model_path).name}" if m.label.startswith("model:") else m.label for m in methods]
        img = report.contact_sheet(sheet, ["IR", "VIS"] + short)
        report.atomic_write_bytes(outputs["--sheet"], report.encode_png(img))

    print(f"{len(pairs)} image pairs from {root}, convention '{args.convention}' (means over the images each method handled)")
    print(report.format_table(mean, metric_names, hib))
    if temporal is not None:
        print(f"\ntemporal, {len(pairs)} frames in id order (grey levels; lower is steadier):")
        print(format_temporal({label: t.result() for label, t in temporal.items()}))
    if failures:
        print(f"{len(failures)} of {len(rows)} (image, method) evaluations failed:", file=sys.stderr)
        for r in failures[:10]:
            print(f"  {r.image} / {r.method}: {r.error}", file=sys.stderr)
        if len(failures) > 10:
            print(f"  ... and {len(failures) - 10} more (see the error column of --csv / --json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
