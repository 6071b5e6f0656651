"""``moefusion-bench``: speed of every backend x precision x size x preset, in one run.

Modules: ``table`` (the backends, derived from the export formats table, and why a row cannot run
here), ``measure`` (timing, statistics, inputs, the end-to-end pipeline run), ``run``
(``run_benchmark``: the rows, the reference row and speed-ups), ``report`` (console table,
Markdown, JSON, PNG, machine facts), ``flops`` (FLOPs per frame, ``--flops``), ``compare`` (two
models timed alternately, ``--compare A B``), ``cli``. ``measure`` is the project's only timer. Python::

    from moefusion.bench.run import Settings, run_benchmark
    result = run_benchmark(Settings(backends=["torch", "onnxruntime"], presets=["edge"],
                                    precisions=["fp32"], sizes=[(480, 640)], device="cpu"))
"""
from __future__ import annotations

__all__ = ["Settings", "run_benchmark"]


def __getattr__(name):  # lazy: importing moefusion.bench must not import torch
    if name in __all__:
        from . import run  # here: imports torch (+4.6 s CPU on `import moefusion.bench`); bench.report must not import run (test_bench)

        return getattr(run, name)
    raise AttributeError(name)
