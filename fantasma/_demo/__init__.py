"""The example application that ``fantasma demo`` runs: order processing on SQLite."""

from __future__ import annotations

from fantasma._demo.runner import run_demo

__all__ = ["run_demo"]
