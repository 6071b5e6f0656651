"""Fusion quality evaluation: metrics, classical baselines and the ``moefusion-eval`` command.

- :mod:`moefusion.eval.metrics`: ``METRICS`` registry and ``compute(names, fused, ir, vis,
  convention="default")`` on gray images in 0..255 (NumPy + OpenCV only, no torch).
- :mod:`moefusion.eval.baselines`: ``BASELINES`` (average, max, laplacian, gff) on [0, 1] inputs.
- :mod:`moefusion.eval.cli`: ``moefusion-eval`` (``python -m moefusion.eval``).

Conventions of every metric: docs/metrics.md.
"""
from .baselines import BASELINES
from .metrics import CONVENTIONS, METRICS, compute, resolve_names

__all__ = ["BASELINES", "CONVENTIONS", "METRICS", "compute", "resolve_names"]
