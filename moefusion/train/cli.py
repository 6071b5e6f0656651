"""moefusion-train: train or fine-tune MoE-Fusion on paired IR/VIS data.

One GPU, the CPU, or many GPUs / nodes through torchrun (DistributedDataParallel, same script):

    moefusion-train --config moefusion/configs/edge.yaml --data ../shared/data/msrs_det
    torchrun --nproc_per_node 4 -m moefusion.train --config cfg.yaml
    moefusion-train --config cfg.yaml --set optim.lr=2e-4 --set data.crop=[320,320]
    moefusion-train --resume runs/edge/last.pt

The config is YAML (see moefusion/configs/*.yaml); ``--set key.sub=value`` overrides any entry
(the value is parsed as YAML). Checkpoints embed the preset, the model config and the training
config, so a checkpoint alone rebuilds its model and resumes its run.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError, cli_entry
from ..model.checkpoint import read_checkpoint
from .config import DEFAULTS, load_config, merge_config, set_entry
from .loop import train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moefusion-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Config entries and defaults: moefusion/configs/edge.yaml")
    p.add_argument("--config", help="YAML config (a path, or the name of a bundled one: edge.yaml, paper.yaml)")
    p.add_argument("--data", nargs="+", metavar="ROOT", help="training dataset roots (replaces data.train)")
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
    flat = {
        ("data", "train"): args.data, ("data", "val"): args.val_data, ("train", "out"): args.out,
        ("optim", "epochs"): args.epochs, ("data", "batch_size"): args.batch_size,
        ("train", "device"): args.device, ("train", "max_steps"): args.max_steps, ("train", "seed"): args.seed,
        ("train", "release"): args.release,
    }
    for (section, key), value in flat.items():
        if value is not None:
            cfg[section][key] = value
    if args.preset:
        cfg["preset"] = args.preset
    train(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
