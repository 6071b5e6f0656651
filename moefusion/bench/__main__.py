"""``python -m moefusion.bench``: the same as ``moefusion-bench``."""
import sys

from .cli import main

sys.exit(main())
