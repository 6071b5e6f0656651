#!/usr/bin/env python
"""Give a trained pixel-head checkpoint the pyramid output head of its preset (moefusion/model/pyramid.py).

    python scripts/add_pyramid_head.py moefusion/weights/moefusion_edge.pt runs/pyramid_init.pt

A checkpoint that already has the pyramid head gets the head's fields of its preset as the preset has
them now (HEAD_FIELDS: the fixed function after the decoder and the decoder's resolution; only
pyramid_levels sizes a weight, and a checkpoint whose levels differ is refused) and keeps every
weight, its dtype and its metadata; ``meta["head_fields_updated"]`` records what changed.
``--set FIELD=VALUE`` takes a value other than the preset's for one of those fields, e.g. to
fine-tune without the attention term and add the term afterwards (how the bundled weights were
made, docs/model_card.md):

    python scripts/add_pyramid_head.py moefusion/weights/moefusion_edge.pt runs/init.pt --set pyramid_attention_gain=0

Every weight is kept except MoGE's last conv, which now outputs the pyramid head's maps and starts
at zero: the new checkpoint fuses like a classical pyramid (mean base, energy-selected detail) with
the old encoders, attention and routing in place; fine-tune it with
``moefusion-train --set train.init=NEW`` so the decoder learns the blend. This is how the bundled
edge weights were made (docs/model_card.md).
"""
from __future__ import annotations

import argparse

import torch

from moefusion.model import build_model
from moefusion.model.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from moefusion.model.presets import ModelConfig, list_presets, preset_config

HEAD_FIELDS = ("pyramid_levels", "pyramid_sharpness", "pyramid_detail_gain", "pyramid_attention_gain",
               "decoder_stride")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"a value other than the preset's for one of {', '.join(HEAD_FIELDS)} (repeatable)")
    args = p.parse_args()
    chosen = parse_sets(args.set)
    state = read_checkpoint(args.source)
    old = model_from_checkpoint(state, source=args.source).float()
    # the head's fields as the preset has them now (pyramid_detail_gain...), or the defaults
    preset = preset_config(old.preset) if old.preset in list_presets() else None
    head = {k: getattr(preset, k) for k in HEAD_FIELDS} if preset and preset.output_head == "pyramid" else {}
    if chosen and not head:
        raise SystemExit(f"{args.source}: its preset {old.preset!r} has no pyramid head; --set applies to its fields")
    head.update(chosen)
    if old.cfg.output_head == "pyramid":
        update_head_fields(args.source, args.dest, state, old, head)
        return
    new = _build(args.source, old.preset, {**old.cfg.to_dict(), **head, "output_head": "pyramid"})
    sd = old.state_dict()
    last = len(new.moge.experts.weights) - 1
    for key in (f"moge.experts.weights.{last}", f"moge.experts.biases.{last}"):
        sd[key] = torch.zeros_like(new.state_dict()[key])
    new.load_state_dict(sd)
    meta = {k: v for k, v in state.get("meta", {}).items() if k in ("train_config", "frozen")}
    meta["derived_from"] = args.source
    save_checkpoint(args.dest, new, meta=meta)
    c = new.cfg
    print(f"wrote {args.dest}: pyramid head ({c.decoder_out} maps, sharpness {c.pyramid_sharpness}, detail gain "
          f"{c.pyramid_detail_gain}), MoGE's last conv zero")


def _build(source, preset, fields: dict):
    try:
        return build_model(preset, **fields)
    except ValueError as e:  # an invalid --set value: one line, nothing written
        raise SystemExit(f"{source}: {e}") from None


def parse_sets(items: list[str]) -> dict:
    """--set FIELD=VALUE -> {field: value typed like the field}; one-line exit for anything else."""
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or field not in HEAD_FIELDS:
            raise SystemExit(f"--set {item}: expected FIELD=VALUE with FIELD one of {', '.join(HEAD_FIELDS)}")
        kind = type(getattr(ModelConfig(), field))  # int or float, as the config declares it
        try:
            out[field] = kind(value)
        except ValueError:
            raise SystemExit(f"--set {item}: {value!r} is not a{'n integer' if kind is int else ' number'}") from None
    return out


def update_head_fields(source, dest, state, model, head: dict) -> None:
    """The same weights with the preset's head fields; nothing else changes."""
    if not head:
        raise SystemExit(f"{source}: its preset {model.preset!r} has no pyramid head to take the fields from")
    changed = {k: [getattr(model.cfg, k), v] for k, v in head.items() if getattr(model.cfg, k) != v}
    if "pyramid_levels" in changed:  # the only head field with weights: MoGE's last conv makes levels + 1 maps
        raise SystemExit(f"{source}: pyramid_levels {model.cfg.pyramid_levels} differs from its preset's "
                         f"{head['pyramid_levels']}, which changes the decoder's output; retrain for it")
    if not changed:
        raise SystemExit(f"{source} already has the pyramid head with its preset's fields; nothing to do")
    new = _build(source, model.preset, {**model.cfg.to_dict(), **head})
    new.load_state_dict(model.state_dict())
    meta = dict(state.get("meta", {}))
    meta["head_fields_updated"] = {**meta.get("head_fields_updated", {}), **changed}
    save_checkpoint(dest, new, meta=meta, half=state.get("weights_dtype") == "float16")
    print(f"wrote {dest}: same weights, head fields " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    if "decoder_stride" in changed:  # the decoder's convs now see pooled features: its weights need to adapt
        print(f"decoder_stride changed: fine-tune it (moefusion-train --set train.init={dest})")


if __name__ == "__main__":
    main()
