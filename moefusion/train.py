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
import copy
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Sampler

from .data.augment import train_transform
from .data.datasets import ConcatPairs, PairedDataset, collate_pairs, split_ids
from .errors import UserError, cli_entry
from .model import build_model
from .model.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from .model.losses import fusion_losses

log = logging.getLogger("moefusion.train")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MAX_NONFINITE_STEPS = 20  # skipped non-finite steps tolerated per run before it stops

DEFAULTS: dict = {
    "preset": "edge",
    "model": {},  # ModelConfig overrides
    "data": {
        "train": [],  # dataset roots (any layout of moefusion.data)
        "val": [],  # explicit validation roots; else a held-out fraction of each training root
        "val_fraction": 0.15,
        "crop": [256, 256],  # training crop (h, w)
        "scale_range": [0.75, 1.25],
        "batch_size": 4,  # per process
        "workers": 2,
        "val_images": 16,  # validation images per evaluation (full size, batch 1)
    },
    "loss": {
        "grad": 10.0,  # Sobel max-gradient L1 (paper: 10)
        "pixel": 1.0,  # box-masked pixel L1 (paper: 1)
        "signed_grad": False,  # gradient term on signed Sobel responses (keeps edge polarity; paper: False)
    },
    "optim": {
        "lr": 1.0e-4,
        "weight_decay": 1.0e-4,
        "grad_clip": 35.0,
        "epochs": 24,
        "lr_steps": [16, 22],  # epochs at which the learning rate drops x0.1
        "warmup_iters": 500,
        "warmup_ratio": 0.333,
    },
    "train": {
        "out": "runs/train",
        "seed": 0,
        "amp": True,  # fp16 autocast on CUDA; ignored on the CPU
        "device": "auto",
        "val_every": 1,  # epochs
        "max_steps": None,  # stop early after this many optimiser steps (quick runs)
        "release": None,  # also write a small fp16 release checkpoint here at the end
    },
}


# ----------------------------------------------------------------------------- config


def _merge(base: dict, new: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in new.items():
        if key not in out and where != "model":
            raise UserError(f"unknown config entry {where + '.' if where else ''}{key}; see moefusion/configs/edge.yaml")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, key if not where else f"{where}.{key}")
        else:
            out[key] = value
    return out


def _set(cfg: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw)
    parts = key.strip().split(".")
    node = {}
    cur = node
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    cfg.update(_merge(cfg, node))


def load_config(path: str | None, sets: list[str]) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        p = Path(path)
        if not p.is_file() and (CONFIG_DIR / path).is_file():
            p = CONFIG_DIR / path
        if not p.is_file():
            raise UserError(f"config file not found: {path} (bundled: {', '.join(sorted(x.name for x in CONFIG_DIR.glob('*.yaml')))})")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: a config must be a YAML mapping")
        cfg = _merge(cfg, loaded)
    for s in sets:
        _set(cfg, s)
    return cfg


# ----------------------------------------------------------------------------- data


class GroupedBatchSampler(Sampler):
    """Batches drawn from one root at a time, so annotated and unannotated sets never mix in a
    batch (the detectors must not learn that unlabelled objects are background). Shuffled per
    epoch, split across distributed ranks; the last incomplete batch of each root is kept."""

    def __init__(self, sizes: list[int], batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.sizes, self.batch_size, self.seed, self.rank, self.world = sizes, batch_size, seed, rank, world
        self.epoch = 0

    def _batches(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches, offset = [], 0
        for n in self.sizes:
            order = (torch.randperm(n, generator=g) + offset).tolist()
            batches += [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
            offset += n
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
        usable = len(batches) - len(batches) % self.world if len(batches) >= self.world else len(batches)
        return batches[self.rank : usable : self.world]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self):
        return len(self._batches())


def build_datasets(cfg: dict):
    d = cfg["data"]
    if not d["train"]:
        raise UserError("no training data: give --data ROOT (or data.train in the config)")
    if min(d["crop"]) < 96:
        # the detectors' coarsest level (stride 64) needs at least 2x2 cells for BatchNorm at batch 1
        raise UserError(f"data.crop={d['crop']} is too small; use at least [96, 96]")
    transform = train_transform(tuple(d["crop"]), scale_range=tuple(d["scale_range"]) if d["scale_range"] else None)
    train_sets, val_sets = [], []
    for root in d["train"]:
        full = PairedDataset(root)
        if d["val_fraction"]:
            train_ids, val_ids = split_ids(full.ids, d["val_fraction"], seed=cfg["train"]["seed"])
        else:
            train_ids, val_ids = full.ids, []
        train_sets.append(full.subset(train_ids, transform=transform))
        if val_ids:
            val_sets.append(full.subset(val_ids, transform=None))
    for root in d["val"]:
        val_sets.append(PairedDataset(root))
    train = ConcatPairs(train_sets)
    val = ConcatPairs(val_sets) if val_sets else None
    return train, val


def _targets(batch, modality: str, device):
    """torchvision detection targets (labels 1-based) when every image of the batch has boxes."""
    if not bool(batch[f"has_boxes_{modality}"].all()):
        return None
    return [
        {"boxes": b.to(device), "labels": (l + 1).to(device)}
        for b, l in zip(batch[f"boxes_{modality}"], batch[f"labels_{modality}"])
    ]


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model, val_set, device, max_images: int) -> dict:
    from .eval.metrics import compute
    from .eval.baselines import average

    names = ["EN", "SD", "SF", "AG", "Qabf"]
    was_training = model.training
    model.eval()
    scores = {n: [] for n in names}
    base = {n: [] for n in names}
    count = min(len(val_set), max_images)
    for i in np.linspace(0, len(val_set) - 1, count).round().astype(int) if count else []:
        item = val_set[int(i)]
        ir, vis = item["ir"][None].to(device), item["vis"][None].to(device)
        fused = model(ir, vis).fused.clamp(0, 1)[0, 0].float().cpu().numpy()
        ir_np, vis_np = item["ir"][0].numpy(), item["vis"][0].numpy()
        for n, v in compute(names, fused * 255, ir_np * 255, vis_np * 255).items():
            scores[n].append(v)
        for n, v in compute(names, average(ir_np, vis_np) * 255, ir_np * 255, vis_np * 255).items():
            base[n].append(v)
    model.train(was_training)
    out = {n: float(np.mean(v)) for n, v in scores.items() if v}
    out.update({f"average_{n}": float(np.mean(v)) for n, v in base.items() if v})
    return out


# ----------------------------------------------------------------------------- training


def _setup_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return dist.get_rank(), world, local


def _device(cfg, local_rank):
    want = cfg["train"]["device"]
    if want == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={want} but no CUDA GPU is visible; use --device cpu")
    return torch.device(want)


def _lr_factor(epoch: int, it: int, optim_cfg: dict) -> float:
    factor = 0.1 ** sum(epoch >= s for s in optim_cfg["lr_steps"])
    warm = optim_cfg["warmup_iters"]
    if warm and it < warm:
        r = optim_cfg["warmup_ratio"]
        factor *= r + (1 - r) * it / warm
    return factor


def _seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: dict, resume: str | None = None) -> Path:
    rank, world, local = _setup_distributed()
    device = _device(cfg, local)
    _seed_all(cfg["train"]["seed"] + rank)
    out_dir = Path(cfg["train"]["out"])
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    train_set, val_set = build_datasets(cfg)
    if rank == 0:
        log.info("training data:\n%s", train_set.report())
        if val_set is not None:
            log.info("validation data:\n%s", val_set.report())

    state = None
    if resume:
        state = read_checkpoint(resume)
        model = model_from_checkpoint(state, source=resume).train()
    else:
        overrides = dict(cfg["model"])
        if train_set.class_names:
            overrides.setdefault("num_classes", len(train_set.class_names))
            overrides.setdefault("class_names", list(train_set.class_names))
        model = build_model(cfg["preset"], dispatch="sparse", **overrides)
    model.to(device).train()
    core = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local] if device.type == "cuda" else None, find_unused_parameters=True
        )

    params = [p for p in core.parameters() if p.requires_grad]
    opt_cfg = cfg["optim"]
    optimizer = torch.optim.Adam(params, lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"])
    use_amp = bool(cfg["train"]["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    sampler = GroupedBatchSampler([len(d) for d in train_set.datasets], cfg["data"]["batch_size"],
                                  cfg["train"]["seed"], rank, world)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_pairs,
                        num_workers=cfg["data"]["workers"], persistent_workers=cfg["data"]["workers"] > 0)

    start_epoch, step, history = 0, 0, []
    if state is not None:
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and use_amp:
            scaler.load_state_dict(state["scaler"])
        start_epoch = state["meta"].get("epoch", 0)
        step = state["meta"].get("step", 0)
        history = state["meta"].get("history", [])
        if rank == 0:
            log.info("resumed %s at epoch %d, step %d", resume, start_epoch, step)

    max_steps = cfg["train"]["max_steps"]
    epochs = opt_cfg["epochs"]
    if max_steps:
        epochs = max(epochs, start_epoch + math.ceil((max_steps - step) / max(len(sampler), 1)))
    from tqdm import tqdm

    done, nonfinite = False, 0
    last_path = out_dir / "last.pt"
    for epoch in range(start_epoch, epochs):
        sampler.epoch = epoch
        running: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=rank != 0, leave=False, dynamic_ncols=True)
        t0 = time.time()
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = opt_cfg["lr"] * _lr_factor(epoch, step, opt_cfg)
            ir, vis = batch["ir"].to(device, non_blocking=True), batch["vis"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                out = model(ir, vis, _targets(batch, "ir", device), _targets(batch, "vis", device))
            boxes = [b for b in batch["boxes"]] if bool(batch["has_boxes"].any()) else None
            terms = fusion_losses(out.fused.float(), vis, ir, boxes, out.aux_loss, out.det_losses,
                                  grad_weight=cfg["loss"]["grad"], pixel_weight=cfg["loss"]["pixel"],
                                  signed_grad=bool(cfg["loss"]["signed_grad"]))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, opt_cfg["grad_clip"])
            if not use_amp and not torch.isfinite(grad_norm):
                # GradScaler skips such steps under AMP; without it one step would make every weight NaN.
                nonfinite += 1
                log.warning("non-finite gradient at step %d: step skipped (%d so far)", step, nonfinite)
                if nonfinite > MAX_NONFINITE_STEPS:
                    raise UserError(f"training diverged: {nonfinite} steps with non-finite gradients; "
                                    "lower optim.lr or raise optim.warmup_iters")
                continue
            scaler.step(optimizer)
            scaler.update()
            step += 1
            for k, v in terms.items():
                running[k] = 0.9 * running.get(k, float(v.detach())) + 0.1 * float(v.detach())
            bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()})
            if max_steps and step >= max_steps:
                done = True
                break
        record = {"epoch": epoch + 1, "step": step, "seconds": round(time.time() - t0, 1),
                  **{f"loss_{k}": round(v, 5) for k, v in running.items()}}
        last_epoch = done or epoch + 1 == epochs
        if rank == 0 and val_set is not None and ((epoch + 1) % cfg["train"]["val_every"] == 0 or last_epoch):
            record.update({k: round(v, 4) for k, v in validate(core, val_set, device, cfg["data"]["val_images"]).items()})
        history.append(record)
        if rank == 0:
            log.info("%s", "  ".join(f"{k}={v}" for k, v in record.items()))
            meta = {"epoch": epoch + 1, "step": step, "history": history, "train_config": cfg}
            save_checkpoint(last_path, core, meta=meta, optimizer=optimizer.state_dict(),
                            scaler=scaler.state_dict() if use_amp else {})
        if done:
            break

    if rank == 0 and cfg["train"]["release"]:
        meta = {"epoch": history[-1]["epoch"] if history else 0, "step": step, "history": history, "train_config": cfg}
        save_checkpoint(cfg["train"]["release"], core, meta=meta, half=True)
        log.info("release checkpoint: %s", cfg["train"]["release"])
    if world > 1:
        dist.destroy_process_group()
    return last_path


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
        cfg = _merge(DEFAULTS, saved)
        for s in args.set:
            _set(cfg, s)
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
