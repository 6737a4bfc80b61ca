"""topics and subscriptions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "topics",
        sa.Column("app_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("app_id", "key"),
    )
    op.create_table(
        "subscriptions",
        sa.Column("app_id", sa.String(length=40), nullable=False),
        sa.Column("topic_key", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id", "topic_key"], ["topics.app_id", "topics.key"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("app_id", "topic_key", "user_id"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("subscriptions")
    op.drop_table("topics")
