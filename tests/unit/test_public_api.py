"""Tests for the public surface: what ``fantasma`` exports, and its type marker."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import fantasma

PUBLIC_NAMES = {
    "AsyncioExecutor",
    "Clock",
    "ClusterSettings",
    "ConfigurationError",
    "Cron",
    "Executor",
    "Fantasma",
    "FantasmaError",
    "InvalidCronExpression",
    "InvalidTriggerError",
    "Job",
    "JobContext",
    "JobHandler",
    "JobId",
    "JobNotFoundError",
    "JobStatus",
    "JobTimeoutError",
    "LeaderLease",
    "LeaseLostError",
    "MemoryStorage",
    "MisfirePolicy",
    "OneOffTrigger",
    "RecurringJob",
    "RecurringTrigger",
    "Run",
    "RunOutcome",
    "SchemaError",
    "SerializationError",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "SystemClock",
    "Trigger",
    "UnknownJobTypeError",
}
"""Every name a user may import from ``fantasma``; adding one is a decision."""


def test_all_matches_public_names() -> None:
    assert set(fantasma.__all__) == PUBLIC_NAMES


def test_all_has_no_duplicates() -> None:
    assert len(fantasma.__all__) == len(set(fantasma.__all__))


@pytest.mark.parametrize("name", sorted(PUBLIC_NAMES))
def test_public_name_importable(name: str) -> None:
    module = importlib.import_module("fantasma")

    assert getattr(module, name) is not None


@pytest.mark.parametrize("name", sorted(PUBLIC_NAMES))
def test_public_name_defined_in_fantasma(name: str) -> None:
    """Exports come from the package's own modules, not re-exported dependencies."""
    value = getattr(fantasma, name)

    assert value.__module__.startswith("fantasma.")


@pytest.mark.parametrize(
    "name",
    sorted(name for name in PUBLIC_NAMES if name.endswith(("Error", "Expression"))),
)
def test_error_derives_from_root(name: str) -> None:
    assert issubclass(getattr(fantasma, name), fantasma.FantasmaError)


def test_package_ships_py_typed() -> None:
    marker = Path(fantasma.__file__).parent / "py.typed"

    assert marker.is_file()
