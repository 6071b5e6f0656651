"""moefusion-train: train or fine-tune MoE-Fusion on paired IR/VIS data.

One GPU, the CPU, or many GPUs / nodes through torchrun (DistributedDataParallel, same script):

    moefusion-train --config moefusion/configs/edge.yaml --data ../shared/data/msrs_det
    torchrun --nproc_per_node 4 -m moefusion.train --config cfg.yaml
    moefusion-train --config cfg.yaml --set optim.lr=2e-4 --set data.crop=[320,320]
    moefusion-train --resume runs/edge/last.pt

The shipped weights: ``moefusion-train --config moefusion/configs/edge.yaml --data ../shared/data``
(docs/model_card.md). Run the same command again after an interruption and it resumes from
``<out>/last.pt``. Checkpoints record the command, the config and a fingerprint of the data.

The config is YAML (see moefusion/configs/*.yaml); ``--set key.sub=value`` overrides any entry
(the value is parsed as YAML). Checkpoints embed the preset, the model config and the training
config, so a checkpoint alone rebuilds its model and resumes its run.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from ..errors import UserError, cli_entry
from ..model.checkpoint import read_checkpoint
from .config import DEFAULTS, load_config, merge_config, set_entry
from .loop import train

log = logging.getLogger("moefusion.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moefusion-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Config entries and defaults: moefusion/configs/edge.yaml")
    p.add_argument("--config", help="YAML config (a path, or the name of a bundled one: edge.yaml, paper.yaml)")
    p.add_argument("--data", nargs="+", metavar="ROOT",
                   help="training dataset roots (replaces data.train); with a config that names its sets under "
                        "data.root (edge.yaml), one folder holding those sets sets data.root instead")
    p.add_argument("--val-data", nargs="+", metavar="ROOT", help="validation roots (replaces data.val)")
    p.add_argument("--preset", help="model preset (replaces preset)")
    p.add_argument("--out", help="output folder (replaces train.out)")
    p.add_argument("--epochs", type=int, help="replaces optim.epochs")
    p.add_argument("--batch-size", type=int, help="per-process batch size (replaces data.batch_size)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (replaces train.device)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--release", metavar="PATH", help="also write a small fp16 checkpoint here at the end")
    p.add_argument("--resume", metavar="CKPT", help="resume from a checkpoint written by moefusion-train")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config entry (YAML value)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.resume and not args.config:
        saved = read_checkpoint(args.resume)["meta"].get("train_config")
        if not saved:
            raise UserError(f"{args.resume} holds no training config; pass --config as well")
        cfg = merge_config(DEFAULTS, saved)
        for s in args.set:
            set_entry(cfg, s)
    else:
        cfg = load_config(args.config, args.set)
    if args.data:
        apply_data_argument(cfg, args.data)
    flat = {
        ("data", "val"): args.val_data, ("train", "out"): args.out,
        ("optim", "epochs"): args.epochs, ("data", "batch_size"): args.batch_size,
        ("train", "device"): args.device, ("train", "max_steps"): args.max_steps, ("train", "seed"): args.seed,
        ("train", "release"): args.release,
    }
    for (section, key), value in flat.items():
        if value is not None:
            cfg[section][key] = value
    if args.preset:
        cfg["preset"] = args.preset
    recipe = {"command": shlex.join(["moefusion-train", *(sys.argv[1:] if argv is None else argv)]),
              "config_file": args.config, "config": load_config(args.config, []) if args.config else None}
    train(cfg, resume=args.resume, recipe=recipe)
    return 0


def apply_data_argument(cfg: dict, roots: list[str]) -> None:
    """``--data``: one folder that holds the config's data sets (named under data.root) becomes
    data.root; anything else replaces data.train (and the config's own validation sets and root)."""
    d = cfg["data"]
    first = d["train"][0] if d["train"] else None
    name = first.get("video") if isinstance(first, dict) else first
    if d.get("root") and len(roots) == 1 and name is not None and (Path(roots[0]) / str(name)).exists():
        log.info("data root: %s (the config's sets under it)", roots[0])
        d["root"] = roots[0]
        return
    if d.get("root"):
        log.info("--data replaces the config's data sets (%s holds no %s)", roots[0], name)
    d["train"], d["root"] = list(roots), None
    if d.get("root") is None and cfg["data"]["val"] and not all(Path(str(v)).is_absolute() for v in d["val"]):
        d["val"] = []


if __name__ == "__main__":
    sys.exit(main())
