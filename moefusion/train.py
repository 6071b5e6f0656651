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
from .model.losses import fusion_losses, target_mask

log = logging.getLogger("moefusion.train")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MAX_NONFINITE_STEPS = 20  # skipped non-finite steps tolerated per run before it stops

DEFAULTS: dict = {
    "preset": "edge",
    "model": {},  # ModelConfig overrides
    "data": {
        "train": [],  # dataset roots (any layout of moefusion.data), or {video: ROOT, frame_step: N, exclude: [clip]}
        "val": [],  # explicit validation roots; else a held-out fraction of each training root
        "val_fraction": 0.15,
        "crop": [256, 256],  # training crop (h, w)
        "scale_range": [0.75, 1.25],
        "batch_size": 4,  # per process
        "workers": 2,
        "val_images": 16,  # validation images per evaluation, spread evenly over the held-out sets (full size, batch 1)
    },
    "loss": {
        "grad": 10.0,  # Sobel max-gradient L1 (paper: 10)
        "pixel": 1.0,  # box-masked pixel L1 (paper: 1)
        "signed_grad": False,  # gradient term on signed Sobel responses (keeps edge polarity; paper: False)
        "background_max": 0.0,  # pixel target outside the targets: 0 mean of the sources (paper) .. 1 their max
        "ssim": 0.0,  # weight of 1 - mean SSIM to both sources (paper: none)
        "pseudo_targets": False,  # targets = boxes + thermal saliency on every frame (paper: boxes only)
        "attention": 0.0,  # weight of the loss teaching the attention those targets (paper: none)
        "detail": 0.0,  # weight of the multi-scale Laplacian detail term (paper: none)
        "pixel_levels": 0,  # pixel term after this many pyramid reductions (base layer only; paper: 0)
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
        "init": None,  # start from these weights (fine-tuning; fresh optimiser and schedule), e.g. the bundled ones
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
    _coerce_numbers(cfg, DEFAULTS)
    return cfg


def _coerce_numbers(cfg: dict, defaults: dict, where: str = "") -> None:
    """YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string: entries whose default is a number
    are parsed as one, or named in a one-line error."""
    for key, default in defaults.items():
        name = f"{where}{key}"
        value = cfg.get(key)
        if isinstance(default, dict) and isinstance(value, dict):
            _coerce_numbers(value, default, name + ".")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise UserError(f"config {name}: {value!r} is not a number (e.g. --set {name}={default})") from None
            cfg[key] = int(number) if isinstance(default, int) and number.is_integer() else number


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


def dataset_root(entry) -> str:
    """A data.train / data.val entry as a folder PairedDataset reads: a path as is; a video entry
    ``{video: ROOT, frame_step: N, exclude: [clips]}`` as its cached frame folder."""
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"video", "frame_step", "exclude"})
        if "video" not in entry or unknown:
            raise UserError(f"data entry {entry}: expected {{video: ROOT, frame_step: N, exclude: [clip, ...]}}")
        from .data.video import extract_frame_pairs

        if any(not isinstance(c, str) for c in entry.get("exclude", [])):
            raise UserError(f"data entry {entry}: quote the clip names in exclude (YAML reads 0117_1620 as a number)")

        return str(extract_frame_pairs(entry["video"], int(entry.get("frame_step", 15)), entry.get("exclude", [])))
    return str(entry)


def build_datasets(cfg: dict):
    d = cfg["data"]
    if not d["train"]:
        raise UserError("no training data: give --data ROOT (or data.train in the config)")
    if min(d["crop"]) < 96:
        # the detectors' coarsest level (stride 64) needs at least 2x2 cells for BatchNorm at batch 1
        raise UserError(f"data.crop={d['crop']} is too small; use at least [96, 96]")
    transform = train_transform(tuple(d["crop"]), scale_range=tuple(d["scale_range"]) if d["scale_range"] else None)
    train_sets, val_sets = [], []
    for entry in d["train"]:
        full = PairedDataset(dataset_root(entry))
        if d["val_fraction"]:
            train_ids, val_ids = split_ids(full.ids, d["val_fraction"], seed=cfg["train"]["seed"])
        else:
            train_ids, val_ids = full.ids, []
        train_sets.append(full.subset(train_ids, transform=transform))
        if val_ids:
            val_sets.append(full.subset(val_ids, transform=None))
    for entry in d["val"]:
        val_sets.append(PairedDataset(dataset_root(entry)))
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


# ----------------------------------------------------------------------------- routing statistics

# A layer counts as collapsed when an expert is never chosen, or when the median of its smallest
# selected weight falls below this (its k-th expert then contributes nothing: a dead expert's FLOPs).
COLLAPSE_MIN_WEIGHT = 0.01


class RoutingStats:
    """Per MoE layer: how often each expert is chosen, the distinct expert sets, and the smallest
    selected weight per sample (median reported)."""

    def __init__(self):
        self.counts: dict[str, np.ndarray] = {}
        self.sets: dict[str, set] = {}
        self.min_weights: dict[str, list] = {}

    def add(self, gatings: dict) -> None:
        for name, g in gatings.items():
            idx = g.indices.detach().cpu().numpy()
            e = g.gates.shape[1]
            self.counts.setdefault(name, np.zeros(e, np.int64))
            np.add.at(self.counts[name], idx.reshape(-1), 1)
            self.sets.setdefault(name, set()).update(tuple(sorted(r)) for r in idx.tolist())
            self.min_weights.setdefault(name, []).extend(g.weights.detach().float().min(dim=1).values.cpu().tolist())

    def summary(self, prefix: str = "") -> dict:
        out = {}
        for name, counts in self.counts.items():
            out[f"{prefix}{name}_experts"] = "/".join(str(int(c)) for c in counts)
            out[f"{prefix}{name}_sets"] = len(self.sets[name])
            out[f"{prefix}{name}_minw"] = round(float(np.median(self.min_weights[name])), 4)
        return out

    def collapsed(self) -> list[str]:
        """Descriptions of the layers that collapsed, empty when all are alive."""
        bad = []
        for name, counts in self.counts.items():
            dead = [str(i) for i, c in enumerate(counts) if c == 0]
            minw = float(np.median(self.min_weights[name]))
            if dead:
                bad.append(f"{name}: expert(s) {', '.join(dead)} never chosen")
            elif minw < COLLAPSE_MIN_WEIGHT:
                bad.append(f"{name}: median smallest selected weight {minw:.2g} < {COLLAPSE_MIN_WEIGHT}")
        return bad


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model, val_set, device, max_images: int) -> dict:
    """Metrics of the model and of a 4-level Laplacian pyramid (the strongest simple baseline) on
    ``max_images`` held-out images drawn evenly from each held-out set (a mean over mixed sets hides
    a set where the model loses), plus how many sets the model beats the pyramid on in Qabf."""
    from .eval.metrics import compute
    from .eval.baselines import laplacian_pyramid

    names = ["EN", "SD", "SF", "AG", "Qabf"]
    was_training = model.training
    model.eval()
    parts = getattr(val_set, "datasets", [val_set])
    per_set = max(1, max_images // max(1, len(parts))) if max_images else 0
    scores = {n: [] for n in names}
    base = {n: [] for n in names}
    sets_above, sets_seen = 0, 0
    routing = RoutingStats()
    for part in parts:
        count = min(len(part), per_set)
        first = len(scores["Qabf"])  # this set's images are scores[...][first:]
        for i in np.linspace(0, len(part) - 1, count).round().astype(int) if count else []:
            item = part[int(i)]
            ir, vis = item["ir"][None].to(device), item["vis"][None].to(device)
            out = model(ir, vis)
            routing.add(out.gatings)
            fused = out.fused.clamp(0, 1)[0, 0].float().cpu().numpy()
            ir_np, vis_np = item["ir"][0].numpy(), item["vis"][0].numpy()
            for n, v in compute(names, fused * 255, ir_np * 255, vis_np * 255).items():
                scores[n].append(v)
            for n, v in compute(names, laplacian_pyramid(ir_np, vis_np) * 255, ir_np * 255, vis_np * 255).items():
                base[n].append(v)
        if count:
            sets_seen += 1
            sets_above += float(np.mean(scores["Qabf"][first:])) > float(np.mean(base["Qabf"][first:]))
    model.train(was_training)
    out = {n: float(np.mean(v)) for n, v in scores.items() if v}
    out.update({f"laplacian_{n}": float(np.mean(v)) for n, v in base.items() if v})
    if sets_seen:
        out["Qabf_sets_above_laplacian"] = f"{sets_above}/{sets_seen}"
    out.update(routing.summary("val_"))
    for problem in routing.collapsed():
        log.warning("validation: MoE layer collapsed: %s", problem)
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


def _freeze_like(model, names) -> None:
    params = dict(model.named_parameters())
    for n in names:
        if n in params:
            params[n].requires_grad_(False)


def _load_backbones(model) -> None:
    """ImageNet weights for the detector backbones when the model config names them."""
    name = model.cfg.backbone_weights
    if not name:
        log.info("detector backbones: learnt from scratch (backbone_weights: null)")
        return
    if model.cfg.detector_norm == "group":
        raise UserError("detector_norm=group cannot take ImageNet backbone weights (they carry BatchNorm "
                        "statistics); use --set model.detector_norm=frozen, or model.backbone_weights=null")
    from .model.attention import BACKBONE_WEIGHTS, backbone_weights_enum

    try:
        weights = backbone_weights_enum(model.cfg.detector, name)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        frozen = model.attention.load_pretrained(name)
    except (OSError, RuntimeError) as e:  # URLError is an OSError: no network, proxy, disk full
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise UserError(f"cannot load {BACKBONE_WEIGHTS[model.cfg.detector].__name__}.{weights.name} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); download {weights.url} to {cache}, "
                        "or train from scratch with --set model.backbone_weights=null "
                        "--set model.detector_norm=group") from None
    log.info("detector backbones: torchvision %s (%d frozen parameter tensors)", weights, len(frozen))


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
    elif cfg["train"]["init"]:
        init = cfg["train"]["init"]
        init_state = read_checkpoint(init)
        model = model_from_checkpoint(init_state, source=init).float().train()
        _freeze_like(model, init_state["meta"].get("frozen", []))  # a frozen stem stays frozen
        if cfg["preset"] != model.preset:
            log.warning("train.init %s is a %r model; preset %r is ignored", init, model.preset, cfg["preset"])
        log.info("fine-tuning from %s", init)
    else:
        overrides = dict(cfg["model"])
        if train_set.class_names:
            overrides.setdefault("num_classes", len(train_set.class_names))
            overrides.setdefault("class_names", list(train_set.class_names))
        model = build_model(cfg["preset"], dispatch="sparse", **overrides)
        _load_backbones(model)
    model.to(device).train()
    core = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local] if device.type == "cuda" else None, find_unused_parameters=True
        )

    if state is not None:  # frozen stems stay frozen across a resume
        _freeze_like(core, state["meta"].get("frozen", []))
    frozen = [n for n, p in core.named_parameters() if not p.requires_grad]
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

    loss_cfg = cfg["loss"]
    done, nonfinite = False, 0
    last_path = out_dir / "last.pt"
    for epoch in range(start_epoch, epochs):
        sampler.epoch = epoch
        running: dict[str, float] = {}
        routing = RoutingStats()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=rank != 0, leave=False, dynamic_ncols=True)
        t0 = time.time()
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = opt_cfg["lr"] * _lr_factor(epoch, step, opt_cfg)
            ir, vis = batch["ir"].to(device, non_blocking=True), batch["vis"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                out = model(ir, vis, _targets(batch, "ir", device), _targets(batch, "vis", device))
            boxes = [b for b in batch["boxes"]] if bool(batch["has_boxes"].any()) else None
            mask = target_mask(ir.shape, device, boxes, ir if loss_cfg["pseudo_targets"] else None)
            terms = fusion_losses(out.fused.float(), vis, ir, boxes, out.aux_loss, out.det_losses,
                                  grad_weight=loss_cfg["grad"], pixel_weight=loss_cfg["pixel"],
                                  signed_grad=bool(loss_cfg["signed_grad"]),
                                  background_max=float(loss_cfg["background_max"]), ssim_weight=float(loss_cfg["ssim"]),
                                  mask=mask, attention_maps=out.attention_maps,
                                  attention_weight=float(loss_cfg["attention"]),
                                  detail_weight=float(loss_cfg["detail"]),
                                  pixel_levels=int(loss_cfg["pixel_levels"]))
            routing.add(out.gatings)
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
                  **{f"loss_{k}": round(v, 5) for k, v in running.items()}, **routing.summary()}
        if rank == 0:
            for problem in routing.collapsed():
                log.warning("epoch %d: MoE layer collapsed: %s", epoch + 1, problem)
        last_epoch = done or epoch + 1 == epochs
        if rank == 0 and val_set is not None and ((epoch + 1) % cfg["train"]["val_every"] == 0 or last_epoch):
            record.update({k: round(v, 4) if isinstance(v, float) else v
                           for k, v in validate(core, val_set, device, cfg["data"]["val_images"]).items()})
        history.append(record)
        if rank == 0:
            log.info("%s", "  ".join(f"{k}={v}" for k, v in record.items()))
            meta = {"epoch": epoch + 1, "step": step, "history": history, "train_config": cfg, "frozen": frozen}
            save_checkpoint(last_path, core, meta=meta, optimizer=optimizer.state_dict(),
                            scaler=scaler.state_dict() if use_amp else {})
        if done:
            break

    if rank == 0 and cfg["train"]["release"]:
        meta = {"epoch": history[-1]["epoch"] if history else 0, "step": step, "history": history,
                "train_config": cfg, "frozen": frozen}
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
