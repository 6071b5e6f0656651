"""Training: config (defaults, YAML, --set), data (datasets, batches), validate (against the
Laplacian pyramid), loop (one process or torchrun), cli (moefusion-train)."""
from .cli import build_parser, main
from .config import DEFAULTS, load_config
from .data import build_datasets
from .loop import train
from .validate import validate

__all__ = ["DEFAULTS", "build_datasets", "build_parser", "load_config", "main", "train", "validate"]
