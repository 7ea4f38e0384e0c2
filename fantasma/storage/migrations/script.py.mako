"""${message}"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from fantasma.storage.sql.migrate import current_migration_names
${imports if imports else ""}
logger = logging.getLogger(__name__)

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    table_prefix, schema = current_migration_names()
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    table_prefix, schema = current_migration_names()
    ${downgrades if downgrades else "pass"}
