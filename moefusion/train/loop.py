"""The training loop: one process, the CPU, or many GPUs through torchrun (DistributedDataParallel);
checkpoints that resume the run."""
from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from ..data.combine import collate_pairs
from ..errors import UserError
from ..eval.routing import RoutingStats
from ..model import build_model
from ..model.attention import BACKBONE_WEIGHTS, backbone_weights_enum
from ..model.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from ..model.losses import fusion_losses, target_mask
from .config import option
from .data import GroupedBatchSampler, build_datasets, data_fingerprint, detection_targets
from .validate import validate

log = logging.getLogger("moefusion.train")
MAX_NONFINITE_STEPS = 20  # skipped non-finite steps tolerated per run before it stops


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


def _classical_start(model) -> None:
    """MoGE's last conv at zero: the pyramid head's maps are 0, i.e. a classical pyramid fusion (mean
    base, energy-selected detail), from which training learns where to depart."""
    if model.cfg.output_head != "pyramid":
        raise UserError("train.classical_start needs output_head=pyramid (a pixel head would output zeros)")
    bank = model.moge.experts
    with torch.no_grad():
        bank.weights[-1].zero_()
        bank.biases[-1].zero_()
    log.info("MoGE's last conv starts at zero: a classical pyramid fusion")


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


RESUME_IGNORES = (("train", "max_steps"), ("train", "device"), ("data", "workers"))  # may change between sittings


def _config_differences(a: dict, b: dict, where: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        name = f"{where}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _config_differences(a[k], b[k], name + ".")
        elif a.get(k) != b.get(k) and tuple(name.split(".")) not in RESUME_IGNORES:
            out.append(name)
    return out


def unfinished_run(cfg: dict) -> Path | None:
    """``<out>/last.pt`` when it is this config's run (the same command run again resumes it);
    UserError when it is another config's (a different run would be overwritten)."""
    last = Path(cfg["train"]["out"]) / "last.pt"
    if not last.is_file():
        return None
    saved = read_checkpoint(last)["meta"].get("train_config") or {}
    differ = _config_differences(saved, cfg)
    if differ:
        raise UserError(f"{last} is a run of another config (differs in {', '.join(differ[:6])}); "
                        f"give a new --out, or --resume {last} to continue that run as it was")
    return last


def _expert_choice(cfg: dict) -> tuple[float, float]:
    """(weight, margin in grey levels) of the expert-choice loss, checked."""
    weight, margin = float(option(cfg, "loss", "experts")), float(option(cfg, "loss", "expert_margin"))
    if weight < 0 or not 0 <= margin <= 255:
        raise UserError(f"loss.experts={weight:g} must be >= 0 and loss.expert_margin={margin:g} "
                        "in 0..255 grey levels (e.g. --set loss.expert_margin=6)")
    return weight, margin


def train(cfg: dict, resume: str | None = None, recipe: dict | None = None) -> Path:
    """Train as ``cfg`` says; ``recipe`` (the command, the config file as loaded) is recorded in every
    checkpoint with a fingerprint of the data. Without ``resume``, an unfinished run of the same
    config in ``train.out`` is resumed."""
    rank, world, local = _setup_distributed()
    device = _device(cfg, local)
    _seed_all(cfg["train"]["seed"] + rank)
    out_dir = Path(cfg["train"]["out"])
    expert_weight, expert_margin = _expert_choice(cfg)

    train_set, val_set = build_datasets(cfg)
    if resume is None and not cfg["train"]["init"]:
        found = unfinished_run(cfg)
        if found is not None:
            resume = str(found)
            if rank == 0:
                log.info("resuming the unfinished run in %s (same config)", found)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    recipe = dict(recipe or {})
    recipe["data_fingerprint"] = data_fingerprint(train_set.datasets + (val_set.datasets if val_set else []))
    if rank == 0:
        log.info("data fingerprint: %s", recipe["data_fingerprint"][:16])
        log.info("training data:\n%s", train_set.report())
        if val_set is not None:
            log.info("validation data:\n%s", val_set.report())

    state = None
    if resume:
        state = read_checkpoint(resume)
        first = state["meta"].get("recipe")
        if first:  # the run's recipe is the command that started it; later sittings are listed
            sittings = first.get("resumed", []) + [recipe.get("command")]
            if first.get("data_fingerprint") != recipe["data_fingerprint"]:
                log.warning("the data changed since this run started (fingerprint %s, now %s)",
                            str(first.get("data_fingerprint"))[:16], recipe["data_fingerprint"][:16])
            recipe = {**first, "resumed": sittings}
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
        if cfg["train"]["classical_start"]:
            _classical_start(model)
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

    start_epoch, step, history, skip = 0, 0, [], 0
    if state is not None:
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and use_amp:
            scaler.load_state_dict(state["scaler"])
        start_epoch = state["meta"].get("epoch", 0)
        skip = state["meta"].get("epoch_batches", 0)  # a run stopped mid-epoch goes on where it stopped
        step = state["meta"].get("step", 0)
        history = state["meta"].get("history", [])
        if rank == 0:
            log.info("resumed %s at epoch %d%s, step %d", resume, start_epoch,
                     f" (+{skip} batches)" if skip else "", step)

    max_steps = cfg["train"]["max_steps"]
    epochs = opt_cfg["epochs"]
    if max_steps:
        epochs = max(epochs, start_epoch + math.ceil((max_steps - step) / max(len(sampler), 1)))
    from tqdm import tqdm

    loss_cfg = cfg["loss"]
    done, nonfinite = False, 0
    last_path = out_dir / "last.pt"
    for epoch in range(start_epoch, epochs):
        sampler.epoch, sampler.skip = epoch, skip if epoch == start_epoch else 0
        consumed = sampler.skip
        running: dict[str, float] = {}
        routing = RoutingStats()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=rank != 0, leave=False, dynamic_ncols=True)
        t0 = time.time()
        for batch in bar:
            consumed += 1
            for group in optimizer.param_groups:
                group["lr"] = opt_cfg["lr"] * _lr_factor(epoch, step, opt_cfg)
            ir, vis = batch["ir"].to(device, non_blocking=True), batch["vis"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                out = model(ir, vis, detection_targets(batch, "ir", device), detection_targets(batch, "vis", device),
                            forced=expert_weight > 0)
            boxes = [b for b in batch["boxes"]] if bool(batch["has_boxes"].any()) else None
            mask = target_mask(ir.shape, device, boxes, ir if loss_cfg["pseudo_targets"] else None,
                               rounding=option(cfg, "loss", "box_rounding"))
            terms = fusion_losses(out.fused.float(), vis, ir, boxes, out.aux_loss, out.det_losses,
                                  grad_weight=loss_cfg["grad"], pixel_weight=loss_cfg["pixel"],
                                  signed_grad=bool(loss_cfg["signed_grad"]),
                                  background_max=float(loss_cfg["background_max"]), ssim_weight=float(loss_cfg["ssim"]),
                                  mask=mask, attention_maps=out.attention_maps,
                                  attention_weight=float(loss_cfg["attention"]),
                                  detail_weight=float(loss_cfg["detail"]),
                                  pixel_levels=int(loss_cfg["pixel_levels"]),
                                  background_max_weak=None if loss_cfg["background_max_weak"] is None
                                  else float(loss_cfg["background_max_weak"]),
                                  forced=out.forced, expert_weight=expert_weight,
                                  expert_margin=expert_margin / 255)
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
        sampler.skip = 0
        unfinished = consumed < len(sampler)  # stopped at max_steps mid-epoch: resume inside it
        if rank == 0:
            log.info("%s", "  ".join(f"{k}={v}" for k, v in record.items()))
            meta = {"epoch": epoch + (0 if unfinished else 1), "step": step, "history": history,
                    "train_config": cfg, "frozen": frozen, "recipe": recipe,
                    **({"epoch_batches": consumed} if unfinished else {})}
            save_checkpoint(last_path, core, meta=meta, optimizer=optimizer.state_dict(),
                            scaler=scaler.state_dict() if use_amp else {})
        if done:
            break

    release = cfg["train"]["release"]
    if rank == 0 and release:
        release = str(release).replace("{out}", str(out_dir))
        meta = {"epoch": history[-1]["epoch"] if history else 0, "step": step, "history": history,
                "train_config": cfg, "frozen": frozen, "recipe": recipe}
        save_checkpoint(release, core, meta=meta, half=True)
        log.info("release checkpoint: %s", release)
    if world > 1:
        dist.destroy_process_group()
    return last_path

