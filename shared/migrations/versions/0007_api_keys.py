"""several API keys per app, each revocable

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

Each app's one key (`apps.api_key_hash`) becomes its first row in `api_keys`, so every key
that worked before still works after.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.ids import new_id

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_apps = sa.table(
    "apps",
    sa.column("id", sa.String),
    sa.column("api_key_hash", sa.String),
    sa.column("api_key_prefix", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_keys = sa.table(
    "api_keys",
    sa.column("id", sa.String),
    sa.column("app_id", sa.String),
    sa.column("key_hash", sa.String),
    sa.column("prefix", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("revoked_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("app_id", sa.String(length=40), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_app", "api_keys", ["app_id", "created_at"])
    existing = op.get_bind().execute(
        sa.select(_apps.c.id, _apps.c.api_key_hash, _apps.c.api_key_prefix, _apps.c.created_at)
    )
    rows = [
        {
            "id": new_id("key"),
            "app_id": app_id,
            "key_hash": key_hash,
            "prefix": prefix,
            "created_at": created_at,
            "revoked_at": None,
        }
        for app_id, key_hash, prefix, created_at in existing
    ]
    if rows:
        op.bulk_insert(_keys, rows)
    # The unique constraint on the hash goes with its column.
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("api_key_prefix")
        batch.drop_column("api_key_hash")


def downgrade() -> None:
    """Downgrade schema: each app keeps its oldest key that is not revoked (an app with none
    gets a hash no key has, so it can no longer authenticate)."""
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("api_key_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("api_key_prefix", sa.String(length=16), nullable=True))
    oldest = (
        sa.select(_keys.c.key_hash, _keys.c.prefix)
        .where(_keys.c.app_id == _apps.c.id, _keys.c.revoked_at.is_(None))
        .order_by(_keys.c.created_at, _keys.c.id)
        .limit(1)
    )
    bind = op.get_bind()
    bind.execute(
        _apps.update().values(
            api_key_hash=sa.func.coalesce(
                oldest.with_only_columns(_keys.c.key_hash).scalar_subquery(),
                sa.literal("revoked:") + _apps.c.id,
            ),
            api_key_prefix=sa.func.coalesce(
                oldest.with_only_columns(_keys.c.prefix).scalar_subquery(), sa.literal("")
            ),
        )
    )
    with op.batch_alter_table("apps") as batch:
        batch.alter_column("api_key_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("api_key_prefix", existing_type=sa.String(length=16), nullable=False)
        batch.create_unique_constraint("apps_api_key_hash_key", ["api_key_hash"])
    op.drop_index("ix_api_keys_app", table_name="api_keys")
    op.drop_table("api_keys")
