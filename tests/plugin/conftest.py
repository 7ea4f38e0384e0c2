"""Settings shared by the plugin tests."""

from __future__ import annotations

# pytester's in-process runs drop the modules a run imported once it ends.
# SQLAlchemy's compiled extensions cannot be imported a second time, so the
# SQL backend is imported here, before any run, and stays loaded.
import fantasma.storage.sql  # noqa: F401
