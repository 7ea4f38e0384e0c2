"""fantasma_testing: fake time and simulated clusters for testing fantasma apps."""

from __future__ import annotations

from fantasma_testing.clock import FakeClock
from fantasma_testing.executor import DeterministicExecutor

__all__ = ["DeterministicExecutor", "FakeClock"]
