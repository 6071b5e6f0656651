"""``python -m moefusion.export`` = ``moefusion-export``."""
import sys

from .cli import main

sys.exit(main())
