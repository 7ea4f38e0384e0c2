"""Storage backends and the factory that picks one from a URL."""

from __future__ import annotations

from typing import Any

from fantasma.errors import ConfigurationError
from fantasma.storage.base import Storage
from fantasma.storage.memory import MemoryStorage

__all__ = ["MemoryStorage", "Storage", "storage_from_url"]


def storage_from_url(url: str, **options: Any) -> Storage:
    """Build the storage backend a URL names.

    ``memory://`` gives a :class:`MemoryStorage`; any SQLAlchemy async URL
    (``sqlite+aiosqlite:///file.db``, ``postgresql+asyncpg://...``,
    ``mysql+asyncmy://...``) gives a SQL backend. Keyword options go to the
    backend's constructor.

    Raises:
        ConfigurationError: The URL names no supported backend.
    """
    if url.startswith("memory:"):
        return MemoryStorage(**options)
    if "://" not in url:
        raise ConfigurationError(
            f"invalid storage URL {url!r}: expected 'memory://' or a database URL"
            " such as 'sqlite+aiosqlite:///fantasma.db'"
        )
    from fantasma.storage.sql import SqlStorage

    return SqlStorage(url, **options)
