"""Run the ``fantasma`` command as ``python -m fantasma``."""

from __future__ import annotations

import sys

from fantasma.cli import main

if __name__ == "__main__":
    sys.exit(main())
