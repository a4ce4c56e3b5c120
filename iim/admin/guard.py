"""One clear line instead of a traceback, for every ``iim.admin`` action."""

from __future__ import annotations

import sys
from typing import Callable


def guarded(command: str, errors: tuple[type[Exception], ...]) -> Callable:
    """Wrap ``action(args)``: an error a user can cause (one of ``errors``, or
    Ctrl-C) becomes ``COMMAND ACTION: message`` on stderr and exit status 1."""
    def wrap(action: Callable) -> Callable[..., int]:
        def run(args) -> int:
            try:
                action(args)
            except errors as err:
                print(f"{command} {args.action}: {err}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print(f"{command} {args.action}: interrupted", file=sys.stderr)
                return 1
            return 0
        return run
    return wrap
