#!/usr/bin/env python
"""Evaluate a checkpoint on the held-out part of its training config's data, beside baselines.

    python scripts/eval_heldout.py --weights moefusion/weights/moefusion_edge.pt \
        --config edge.yaml --markdown docs/heldout.md

Rebuilds exactly the validation split moefusion-train used (the ``data.val`` roots whole, plus
``split_ids(ids, data.val_fraction, train.seed)`` of each training root), links those pairs into a
temporary ROOT/ir + ROOT/vis per set (no copies), and runs ``moefusion-eval`` on each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from moefusion.data.datasets import PairedDataset, split_ids
from moefusion.train import load_config

METRICS = "EN,SD,SF,AG,MI,SCD,VIF,Qabf,SSIM"
METHODS = "model,average,max,laplacian,gff"


def heldout_sets(cfg) -> list[tuple[str, PairedDataset, list[str]]]:
    d = cfg["data"]
    sets = []
    for root in d["val"]:
        ds = PairedDataset(root)
        sets.append((f"{ds.name} (whole sequence)", ds, ds.ids))
    if d["val_fraction"]:
        for root in d["train"]:
            ds = PairedDataset(root)
            _, val_ids = split_ids(ds.ids, d["val_fraction"], seed=cfg["train"]["seed"])
            if val_ids:
                sets.append((f"{ds.name} ({len(val_ids)} of {len(ds)} held out)", ds, val_ids))
    return sets


def link_pairs(ds: PairedDataset, ids: list[str], dest: Path) -> None:
    (dest / "ir").mkdir(parents=True)
    (dest / "vis").mkdir()
    index = {i: n for n, i in enumerate(ds.ids)}
    for i in ids:
        ir, vis = ds.paths(index[i])
        os.symlink(Path(ir).resolve(), dest / "ir" / Path(ir).name)
        os.symlink(Path(vis).resolve(), dest / "vis" / Path(vis).name)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--config", default="edge.yaml")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--metrics", default=METRICS)
    p.add_argument("--markdown", help="write the tables here")
    p.add_argument("--sheet-dir", help="write one contact sheet per set here")
    args = p.parse_args()
    cfg = load_config(args.config, [])
    lines = [f"Held-out evaluation of `{args.weights}` (config `{args.config}`), metrics in the default "
             "convention of docs/metrics.md (mean over images).", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, ds, ids) in enumerate(heldout_sets(cfg)):
            root = Path(tmp) / f"set{n}"
            link_pairs(ds, ids, root)
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
