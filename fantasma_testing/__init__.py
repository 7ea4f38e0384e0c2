"""fantasma_testing: fake time, simulated nodes and pytest fixtures for fantasma."""

from __future__ import annotations

from fantasma_testing.assertions import (
    assert_not_run,
    assert_ran,
    assert_ran_times,
    assert_scheduled,
)
from fantasma_testing.clock import DEFAULT_START, FakeClock
from fantasma_testing.driver import SimulationError, SimulationStalledError
from fantasma_testing.executor import DeterministicExecutor
from fantasma_testing.simulated_scheduler import (
    AdvanceTime,
    AsyncAdvanceTime,
    AsyncSimulatedScheduler,
    SimulatedScheduler,
)
from fantasma_testing.simulation import SINGLE_NODE_SETTINGS, Runs, Simulation

__all__ = [
    "DEFAULT_START",
    "SINGLE_NODE_SETTINGS",
    "AdvanceTime",
    "AsyncAdvanceTime",
    "AsyncSimulatedScheduler",
    "DeterministicExecutor",
    "FakeClock",
    "Runs",
    "SimulatedScheduler",
    "Simulation",
    "SimulationError",
    "SimulationStalledError",
    "assert_not_run",
    "assert_ran",
    "assert_ran_times",
    "assert_scheduled",
]
