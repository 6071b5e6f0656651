#!/usr/bin/env python
"""Evaluate a checkpoint on the held-out part of its training config's data, beside baselines.

    python scripts/eval_heldout.py --weights moefusion/weights/moefusion_edge.pt --markdown heldout.md

Rebuilds exactly what moefusion-train held out (moefusion.eval.heldout: the ``data.val`` roots
whole, ``split_ids(ids, data.val_fraction, train.seed)`` of each training root, excluded video
clips), links those pairs into a temporary ROOT/ir + ROOT/vis per set (no copies), and runs
``moefusion-eval`` on each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from moefusion.data.datasets import PairedDataset
from moefusion.eval.heldout import heldout_sets
from moefusion.model.checkpoint import read_checkpoint
from moefusion.train import load_config

METRICS = "EN,SD,SF,AG,MI,SCD,VIF,Qabf,SSIM"
METHODS = "model,average,max,laplacian,gff"


def link_pairs(ds: PairedDataset, dest: Path) -> None:
    (dest / "ir").mkdir(parents=True)
    (dest / "vis").mkdir()
    for n in range(len(ds)):
        ir, vis = ds.paths(n)
        os.symlink(Path(ir).resolve(), dest / "ir" / Path(ir).name)
        os.symlink(Path(vis).resolve(), dest / "vis" / Path(vis).name)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--config", help="training config (default: the one saved in the checkpoint)")
    p.add_argument("--unseen", nargs="*", default=["../shared/data/llvip_samples"],
                   help="folders never used in training, evaluated whole (up to --unseen-limit pairs)")
    p.add_argument("--unseen-limit", type=int, default=12)
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--metrics", default=METRICS)
    p.add_argument("--markdown", help="write the tables here")
    p.add_argument("--sheet-dir", help="write one contact sheet per set here")
    args = p.parse_args()
    saved = read_checkpoint(args.weights)["meta"].get("train_config") if args.weights.endswith(".pt") else None
    if args.config or not saved:
        cfg = load_config(args.config or "edge.yaml", [])
    else:
        cfg = saved
    lines = [f"Held-out evaluation of `{args.weights}` (config `{args.config or 'saved in the checkpoint'}`), "
             "metrics in the default convention of docs/metrics.md (mean over images).", ""]
    sets = [(h.name, h.dataset) for h in heldout_sets(cfg)]
    for root in args.unseen:
        ds = PairedDataset(root)
        ds = ds.subset(ds.ids[: args.unseen_limit], transform=None)
        sets.append((f"{ds.name} (never seen, first {len(ds)} pairs)", ds))
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, ds) in enumerate(sets):
            root = Path(tmp) / f"set{n}"
            link_pairs(ds, root)
            out_json = Path(tmp) / f"set{n}.json"
            cmd = [sys.executable, "-m", "moefusion.eval", "--data", str(root), "--methods", args.methods,
                   "--model", args.weights, "--metrics", args.metrics, "--json", str(out_json)]
            if args.sheet_dir:
                Path(args.sheet_dir).mkdir(parents=True, exist_ok=True)
                cmd += ["--sheet", str(Path(args.sheet_dir) / f"heldout_{ds.name}.png")]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            doc = json.loads(out_json.read_text())
            lines += [f"### {name}", ""] + table(doc, args.metrics.split(",")) + [""]
            print("\n".join(lines[-(len(args.methods.split(",")) + 5):]), flush=True)
    text = "\n".join(lines)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(text)


def table(doc: dict, metrics: list[str]) -> list[str]:
    means = doc["mean"]
    rows = ["| method | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
    for method, values in means.items():
        rows.append(f"| {method} | " + " | ".join(_fmt(values.get(m)) for m in metrics) + " |")
    return rows


def _fmt(v):
    return "-" if v is None else f"{v:.4f}" if abs(v) < 10 else f"{v:.3f}"


if __name__ == "__main__":
    main()
