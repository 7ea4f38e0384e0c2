"""fantasma: a job scheduler for Python services, testable without sleeping."""

from __future__ import annotations

from fantasma.clock import Clock, SystemClock
from fantasma.cluster import ClusterSettings
from fantasma.cron import Cron
from fantasma.errors import (
    ConfigurationError,
    FantasmaError,
    InvalidCronExpression,
    InvalidTriggerError,
    JobNotFoundError,
    JobTimeoutError,
    LeaseLostError,
    SchemaError,
    SerializationError,
    StorageError,
    StorageUnavailableError,
    UnknownJobTypeError,
)
from fantasma.executor import AsyncioExecutor, Executor
from fantasma.handlers import JobContext, JobHandler
from fantasma.jobs import (
    Job,
    JobId,
    JobStatus,
    LeaderLease,
    MisfirePolicy,
    RecurringJob,
    Run,
    RunOutcome,
)
from fantasma.scheduler import Fantasma
from fantasma.storage import MemoryStorage, Storage
from fantasma.triggers import OneOffTrigger, RecurringTrigger, Trigger

__all__ = [
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
]

__version__ = "0.1.0"
