"""User-facing errors.

A ``UserError`` is a mistake the user can fix (a bad path, flag, file or device). Command-line
entry points print its message on one line and exit non-zero, without a traceback; everything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem with the user's input; the message names the file/flag/device and the fix."""

    exit_code = 2


def cli_entry(main):
    """Decorate a CLI ``main(argv=None) -> int`` so that UserError becomes one line and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
