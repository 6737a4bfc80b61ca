"""fan-out limits per app

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-10

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIMITS = ("max_recipients_per_request", "max_recipients_per_minute", "max_topic_subscribers")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("apps") as batch:
        for name in LIMITS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("apps") as batch:
        for name in reversed(LIMITS):
            batch.drop_column(name)
