"""SQL storage backend for SQLite, PostgreSQL and MariaDB/MySQL."""

from __future__ import annotations

import logging

from fantasma.storage.sql.migrate import upgrade_database
from fantasma.storage.sql.schema import DEFAULT_TABLE_PREFIX, Tables, build_tables
from fantasma.storage.sql.storage import SqlStorage

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "SqlStorage",
    "Tables",
    "build_tables",
    "upgrade_database",
]

logger = logging.getLogger(__name__)
