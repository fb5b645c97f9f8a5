"""Command-line errors as one line: ``python -m streamlib run: error: <what is wrong>`` on stderr, exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def fail(parser: argparse.ArgumentParser, message: object) -> NoReturn:
    """Argparse's exit status and prefix, without its usage block: the user reads one line naming the problem."""
    text = " ".join(str(message).split())  # one line, whatever the exception's message held
    print(f"{parser.prog}: error: {text}", file=sys.stderr)
    raise SystemExit(2)
