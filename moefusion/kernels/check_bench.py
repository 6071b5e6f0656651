"""The timed steps of ``python -m moefusion.kernels.check``: each kernel against the PyTorch ops it
replaces, whole MoE layers by dispatch, and the whole model per preset and dispatch.

Each function writes its rows to a ``StepSink`` as it measures them (a step stopped at its budget keeps
them) and stops measuring, with a "skipped: time budget" row, when less than ``need`` seconds are left."""
from __future__ import annotations

import os
import time
import traceback

from .check_report import TARGET_MS, Budget, Row, StepSink, fmt_ms


# ----------------------------------------------------------------------------- timing
def _timer(device: str, iters: int):
    from . import fast  # here: imports torch (+4.4 s CPU on `python -m moefusion.kernels.check --help`, 0.1 s now)

    if device == "cuda":
        return lambda fn, *a, graph=True: fast.time_cuda(fn, *a, iters=iters, warmup=3, graph=graph)
    return lambda fn, *a, graph=True: fast.time_host(fn, *a, iters=max(1, min(iters, 2)))


def _try(fn):
    try:
        return fn(), ""
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        if os.environ.get("MOEFUSION_CHECK_DEBUG"):
            traceback.print_exc()
        return None, msg


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------- kernel benchmarks
def kernel_benchmarks(sink: StepSink, device: str, scale: float, iters: int, batches, budget: Budget,
                      need: float = 10.0) -> tuple[str, str]:
    """Each kernel against the PyTorch ops it replaces, then whole MoE layers by dispatch strategy.
    Returns (status, detail)."""
    import torch

    # here, as in _timer: these import torch (+4.4 s CPU on `python -m moefusion.kernels.check --help`)
    from ..model.gating import gate_descriptor, gated_logsumexp, top_k_gating  # here: torch, see above
    from . import fast  # here: torch, see above
    from . import reference as R  # here: torch, see above

    t_step = time.monotonic()
    timer = _timer(device, iters)
    gpu = sink.env.get("gpu", "")
    dt = torch.float16 if device == "cuda" else torch.float32
    H, W = max(8, int(480 * scale)), max(8, int(640 * scale))
    g_l = (max(1, int(120 * scale)), max(1, int(160 * scale)))  # MoLE grid
    g_g = (max(1, int(60 * scale)), max(1, int(80 * scale)))  # MoGE grid
    torch.backends.cudnn.benchmark = True

    def cl(t):
        return t.contiguous(memory_format=torch.channels_last)

    def pair(name, config, B, torch_fn, ours_fn, args, compare=True):
        if budget.left() < need:
            sink.add(Row("kernel", name, config, B, note="skipped: time budget", gpu=gpu))
            return
        tm, err1 = _try(lambda: timer(torch_fn, *args))
        om, err2 = _try(lambda: timer(ours_fn, *args))
        note = err1 or err2
        sink.row_errors += bool(err2)
        if compare and not note:
            with torch.inference_mode():
                a, b = ours_fn(*args), torch_fn(*args)
            a = a if isinstance(a, torch.Tensor) else a[-1]
            b = b if isinstance(b, torch.Tensor) else b[-1]
            note = f"rel err {_rel(a.float(), b.float()):.1e}"
        sink.add(Row("kernel", name, config, B, tm, om, note, gpu))
        print(f"  {name:34s} B={B} torch {fmt_ms(tm):>8} ms  ours {fmt_ms(om):>8} ms  {note}", flush=True)

    for B in batches:
        dev = device
        # MoGE gate: 160 channels at full size -> 60x80 grid; MoLE gate: 32 channels -> 120x160
        for label, C, grid in (("gate MoGE", 160, g_g), ("gate MoLE", 32, g_l)):
            f = cl(torch.randn(B, C, H, W, device=dev, dtype=dt))
            w = (torch.randn(C * grid[0] * grid[1], 4, device=dev) * 0.01).to(dt)

            def torch_gate(f, w, grid=grid):
                g = top_k_gating(gate_descriptor(f, grid), w, 2)
                return g.indices, g.weights

            def ours_gate(f, w, grid=grid):
                return torch.ops.moefusion.gate(f, w, grid[0], grid[1], 2)

            pair(label, f"{C}x{H}x{W}->{grid[0]}x{grid[1]}, E4 k2", B, torch_gate, ours_gate, (f, w))
        x0, x1 = cl(torch.randn(B, 16, H, W, device=dev, dtype=dt)), cl(torch.randn(B, 16, H, W, device=dev, dtype=dt))
        a = cl(torch.rand(B, 1, H, W, device=dev, dtype=dt))
        pair("attention split (fg+bg)", f"2x16x{H}x{W}", B, R.attention_split,
             torch.ops.moefusion.attention_split, (x0, x1, a))
        x = cl(torch.randn(B, 2 * 16, H, W, device=dev, dtype=dt)).view(B, 2, 16, H, W)
        wts = torch.softmax(torch.randn(B, 2, device=dev), 1)
        pair("combine (log-sum-exp)", f"k2x16x{H}x{W}", B, lambda x, w: gated_logsumexp(x, w),
             torch.ops.moefusion.combine, (x, wts))
        idx = torch.stack([torch.randperm(4, device=dev)[:2] for _ in range(B)]).int()
        for label, cin, cout in (("last conv+combine MoGE", 16, 1), ("last conv+combine MoLE", 8, 16)):
            h = cl(torch.randn(B, 2 * cin, H, W, device=dev, dtype=dt)).view(B, 2, cin, H, W)
            wt = (torch.randn(4, cout, cin, 3, 3, device=dev) * 0.2).to(dt)
            bias = (torch.randn(4, cout, device=dev) * 0.1).to(dt)

            def torch_last(h, wt, bias, idx, wts):
                with fast.use_kernels(False):
                    return fast.last_layer_combine(h, wt, bias, idx, wts, fuse=False)

            pair(label, f"k2 {cin}->{cout} {H}x{W}", B, torch_last, torch.ops.moefusion.expert_conv3x3_combine,
                 (h, wt, bias, idx, wts))

    # whole MoE layers by strategy
    for B in batches:
        for label, G, chans in (("MoGE experts", 1, [160, 64, 32, 16, 1]), ("MoLE experts", 2, [16, 8, 16])):
            if budget.left() < need:
                sink.add(Row("moe layer", label, "", B, note="skipped: time budget", gpu=gpu))
                continue
            E, k = 4, 2
            layers = [((torch.randn(E, co, ci, 3, 3, device=device) * (2 / (9 * ci)) ** 0.5).to(dt),
                       (torch.randn(E, co, device=device) * 0.1).to(dt)) for ci, co in zip(chans[:-1], chans[1:])]
            x = cl(torch.randn(B, G * chans[0], H, W, device=device, dtype=dt))
            idx = torch.stack([torch.randperm(E, device=device)[:k] for _ in range(B)]).int()
            wts = torch.softmax(torch.randn(B, k, device=device), 1)
            ref = R.experts_forward(x.float(), idx, wts, [(a.float(), b.float()) for a, b in layers], G)
            variants = [
                ("per-sample loop (reference)", False, None, None),
                ("dense, PyTorch ops", False, "dense", False),
                ("gathered, PyTorch ops", False, "gathered", False),
                ("dense + kernels", True, "dense", None),
                ("gathered + kernels", True, "gathered", None),
            ]
            base = {}  # PyTorch-ops time per strategy: the '+ kernels' rows' baseline
            for vname, use, strategy, fuse in variants:
                def run(x, idx, wts, use=use, strategy=strategy, fuse=fuse):
                    if strategy is None:
                        return R.experts_forward(x, idx, wts, layers, G)
                    with fast.use_kernels(use):
                        return fast.experts_forward(x, idx, wts, layers, G, strategy=strategy, fuse_last=fuse)

                ms, err = _try(lambda: timer(run, x, idx, wts, graph=strategy is not None))
                note = err
                sink.row_errors += bool(err)
                if not err:
                    with torch.inference_mode():
                        note = f"rel err {_rel(run(x, idx, wts).float(), ref):.1e}"
                if strategy and not use:
                    base[strategy] = ms
                sink.add(Row("moe layer", f"{label}: {vname}", f"{'->'.join(map(str, chans))} {H}x{W}",
                             B, base.get(strategy) if strategy and use else None, ms, note, gpu))
                print(f"  {label}: {vname:30s} B={B} {fmt_ms(ms):>8} ms  {note}", flush=True)
    errors = sink.row_errors
    skipped = sum("skipped" in r.note for r in sink.rows)
    detail = f"{len(sink.rows) - skipped} measured" + (f", {skipped} skipped (time budget)" if skipped else "")
    detail += f", {errors} failed" if errors else ""
    return ("FAIL" if errors else "ok"), f"{detail} in {time.monotonic() - t_step:.0f} s"


# ----------------------------------------------------------------------------- whole model
def _first_tensor(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        for key in ("fused", "fusion", "out", "y"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _prepare_model(preset: str, dispatch: str, device: str):
    """An untrained model with the same weights for every variant, and gate weights drawn at random so
    that routing depends on the input (zero-initialised gates tie every expert)."""
    import torch

    # here, as in _timer: these import torch (+4.7 s CPU on `python -m moefusion.kernels.check --help`)
    from ..model import build_model  # here: torch, see above
    from ..model.gating import randomize_gates  # here: torch, see above

    torch.manual_seed(0)
    return randomize_gates(build_model(preset, dispatch=dispatch), seed=1, scale=None).to(device).eval()




# (label, model dispatch, fp16, channels-last, CUDA graph, kernels strategy (None: PyTorch ops), torch.compile)
EAGER = ("eager fp32, sparse (reference output)", "sparse", False, False, False, None, False)
GRAPH_VARIANTS = [  # the headline number first
    ("fp16 CL graph, sparse + kernels", "sparse", True, True, True, "gathered", False),
    ("fp16 CL graph, sparse, PyTorch ops", "sparse", True, True, True, None, False),
    ("fp16 CL graph, dense, PyTorch ops", "dense", True, True, True, None, False),
    ("fp16 CL graph, dense + kernels (dense strategy)", "dense", True, True, True, "dense", False),
    ("fp32 CL graph, sparse + kernels", "sparse", False, True, True, "gathered", False),
]
COMPILE_VARIANT = ("fp16 CL graph, sparse + kernels + torch.compile", "sparse", True, True, True, "gathered", True)
# the dry run (CPU, tiny frames): one row per dispatch, the same code path as the GPU rows' reference
DRY_VARIANTS = [EAGER, ("eager fp32, dense", "dense", False, False, False, None, False)]


def model_benchmarks(sink: StepSink, device: str, scale: float, iters: int, plan, budget: Budget, forward: str,
                     need: float = 25.0) -> tuple[str, str]:
    """Whole-model rows: ``plan`` is a list of (preset, batch, variant), measured in that order; each row's
    output is compared with eager fp32 (sparse) of the same preset and batch (measured by the plan's EAGER
    row, or run once untimed). Returns (status, detail)."""
    import torch

    from . import fast, ops  # here, as in _timer: imports torch (+4.4 s CPU on moefusion.kernels.check --help)

    t_step = time.monotonic()
    gpu = sink.env.get("gpu", "")
    timer = _timer(device, iters)
    H, W = max(32, int(480 * scale) // 32 * 32), max(32, int(640 * scale) // 32 * 32)
    torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks its fastest algorithms (as kernel_benchmarks)

    def call(model, ir, vis):
        fn = model if forward == "__call__" else getattr(model, forward)
        return _first_tensor(fn(ir, vis))

    def frames(B):
        gen = torch.Generator().manual_seed(B)
        return torch.rand(B, 1, H, W, generator=gen).to(device), torch.rand(B, 1, H, W, generator=gen).to(device)

    references = {}

    def reference(preset, B):
        if (preset, B) not in references:
            model = _prepare_model(preset, "sparse", device)
            with torch.inference_mode():
                out = call(model, *frames(B))
            references[(preset, B)] = out.float().clone() if out is not None else None
            del model
        return references[(preset, B)]

    failed = measured = skipped = 0
    for preset, B, (label, dispatch, half, chl, graph, strategy, comp) in plan:
        name = f"{preset}: {label}"
        if budget.left() < need * (2 if comp else 1):
            sink.add(Row("model", name, f"{W}x{H}", B, note="skipped: time budget", gpu=gpu))
            skipped += 1
            continue
        t = time.monotonic()
        ir, vis = frames(B)
        dtype = torch.float16 if half and device == "cuda" else None
        use = strategy is not None

        def measure():
            model = _prepare_model(preset, dispatch, device)
            if use:
                fast.accelerate(model, strategy=strategy)
            calls0 = sum(ops.CALLS.values())
            with fast.use_kernels(use):
                if device == "cuda" and (graph or comp or dtype is not None):
                    run = fast.optimize(model, [ir, vis], dtype=dtype, channels_last=chl, cuda_graph=graph,
                                        compile=comp, forward=lambda m, a, b: call(m, a, b))
                else:
                    def run(a, b):
                        with torch.inference_mode():
                            return call(model, a, b)
                ms = timer(run, ir, vis, graph=False)
                with torch.inference_mode():
                    out = run(ir, vis)
                    out = out.float().clone() if out is not None else None
            return ms, out, sum(ops.CALLS.values()) - calls0

        res, err = _try(measure)
        note, ms = err, None
        if res is None:
            failed += 1
        else:
            measured += 1
            ms, out, calls = res
            parts = []
            if label == EAGER[0]:
                references[(preset, B)] = out
            elif use:
                parts.append(f"kernel launches captured: {calls}" if calls else "model used no kernels")
            ref = references.get((preset, B))
            if ref is None and label != EAGER[0]:
                ref, rerr = _try(lambda: reference(preset, B))
                if rerr:
                    parts.append(f"no reference: {rerr}")
            if ref is not None and out is not None and out is not ref and out.shape == ref.shape:
                parts.append(f"rel err vs eager fp32 {_rel(out, ref):.1e}")
            if B > 1:
                parts.append(f"{B * 1000 / ms:.0f} frames/s")
            target = TARGET_MS.get(preset)
            if B == 1 and target and device == "cuda" and dtype is not None:
                parts.append(f"target <= {target} ms {'met' if ms <= target else 'missed'}")
            note = "; ".join(parts)
        sink.add(Row("model", name, f"{W}x{H} ({time.monotonic() - t:.0f} s)", B, None, ms, note, gpu))
        print(f"  {name:56s} B={B} {fmt_ms(ms):>8} ms  {note}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    detail = f"{measured} measured" + (f", {skipped} skipped (time budget)" if skipped else "") + \
        (f", {failed} failed" if failed else "") + f" in {time.monotonic() - t_step:.0f} s"
    return ("FAIL" if failed else "ok"), detail
