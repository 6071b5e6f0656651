#!/usr/bin/env python
"""Give a trained checkpoint's MoGE decoder the attention map as one more input (decoder_attention).

    python scripts/add_decoder_attention.py runs/edge/last.pt runs/edge/with_attention.pt

The new input channel starts with zero weights everywhere (expert first layers, gate and noise
weights; its gate-descriptor statistics start at mean 0, variance 1), so the new checkpoint
computes exactly what the old one did; fine-tune it with ``moefusion-train --set train.init=NEW``
to let the decoder use the map. This is how the bundled edge weights were made (docs/model_card.md).
"""
from __future__ import annotations

import argparse

import torch

from moefusion.model import build_model
from moefusion.model.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint


def _insert_rows(t: torch.Tensor, positions: list[int], value: float) -> torch.Tensor:
    """Insert rows of ``value`` so that they end up at ``positions`` of the result (dim 0)."""
    out, src = [], 0
    n = t.shape[0] + len(positions)
    for i in range(n):
        if i in positions:
            out.append(torch.full_like(t[:1], value))
        else:
            out.append(t[src : src + 1])
            src += 1
    return torch.cat(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source")
    p.add_argument("dest")
    args = p.parse_args()
    state = read_checkpoint(args.source)
    old = model_from_checkpoint(state, source=args.source)
    if old.cfg.decoder_attention:
        raise SystemExit(f"{args.source} already has decoder_attention")
    cfg = {**old.cfg.to_dict(), "decoder_attention": True}
    new = build_model(old.preset, **cfg)
    sd = old.state_dict()
    c = old.cfg.decoder_in  # old decoder channels; the new one is channel c (last)
    w0 = sd["moge.experts.weights.0"]
    sd["moge.experts.weights.0"] = torch.cat([w0, torch.zeros_like(w0[:, :, :1])], dim=2)
    if old.cfg.gate_pool == "moments":  # descriptor = [means (c), stds (c)] -> [means (c+1), stds (c+1)]
        at = [c, 2 * c + 1]
        for key in ("moge.w_gate", "moge.w_noise"):
            if key in sd:
                sd[key] = _insert_rows(sd[key], at, 0.0)
        sd["moge.desc_norm.running_mean"] = _insert_rows(sd["moge.desc_norm.running_mean"], at, 0.0)
        sd["moge.desc_norm.running_var"] = _insert_rows(sd["moge.desc_norm.running_var"], at, 1.0)
    else:
        raise SystemExit("only moments gates are supported (a grid gate would need rows per grid cell)")
    new.load_state_dict(sd)
    meta = dict(state.get("meta", {}))
    meta["derived_from"] = args.source
    save_checkpoint(args.dest, new, meta=meta)
    # same function as before: the new channel has no weight yet
    x = torch.rand(1, 1, 96, 128)
    with torch.no_grad():
        a, b = old.eval()(x, x).fused, new.eval()(x, x).fused
    print(f"wrote {args.dest}; max |difference| to the source on a random pair: {float((a - b).abs().max()):.2e}")


if __name__ == "__main__":
    main()
