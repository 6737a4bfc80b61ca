"""fan-out limits per app, and the dispatcher's progress through large messages

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIMITS = ("max_recipients_per_request", "max_recipients_per_minute", "max_topic_subscribers")


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("apps") as batch:
        for name in LIMITS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
    op.create_table(
        "message_expansions",
        sa.Column("message_id", sa.String(length=40), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("after", sa.String(length=200), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("message_expansions")
    with op.batch_alter_table("apps") as batch:
        for name in reversed(LIMITS):
            batch.drop_column(name)
