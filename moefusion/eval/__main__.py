"""``python -m moefusion.eval`` = ``moefusion-eval``."""
import sys

from .cli import main

sys.exit(main())
