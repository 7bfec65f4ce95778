"""Persona memory: lasting facts per sender (empathy_persona_facts).

Revision ID: 0002_persona_facts
Revises: 0001_initial
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_persona_facts"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "empathy_persona_facts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sender_id", sa.String(255), nullable=False),
        sa.Column("fact", sa.Text(), nullable=False),
        sa.Column("fact_key", sa.String(64), nullable=False),
        sa.Column("source_text", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("sender_id", "fact_key", name="uq_persona_fact_per_sender"),
    )
    op.create_index("ix_empathy_persona_facts_sender_id", "empathy_persona_facts", ["sender_id"])


def downgrade() -> None:
    op.drop_index("ix_empathy_persona_facts_sender_id", table_name="empathy_persona_facts")
    op.drop_table("empathy_persona_facts")
