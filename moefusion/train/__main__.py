"""``python -m moefusion.train`` / ``torchrun -m moefusion.train``: the moefusion-train CLI."""
import sys

from .cli import main

sys.exit(main())
