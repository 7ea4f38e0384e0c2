"""Fixtures shared by the whole test suite."""

from __future__ import annotations

# The database fixtures (sqlite_url, postgres_url, mysql_url, sql_url).
pytest_plugins = ["tests.dbs"]
