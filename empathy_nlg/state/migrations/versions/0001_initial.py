"""Initial schema: conversations, turns (perception per user turn) and replies.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "empathy_conversations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sender_id", sa.String(255), nullable=False),
        sa.Column("persona", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_empathy_conversations_sender_id", "empathy_conversations", ["sender_id"], unique=True)
    op.create_table(
        "empathy_turns",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("empathy_conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("turn_index", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("user_text", sa.Text(), nullable=False),
        sa.Column("emotion", sa.String(32), nullable=True),
        sa.Column("emotion_top_k", sa.JSON(), nullable=True),
        sa.Column("polarity", sa.String(16), nullable=True),
        sa.Column("causes", sa.JSON(), nullable=True),
        sa.Column("cm", sa.JSON(), nullable=True),
        sa.Column("crisis", sa.Boolean(), nullable=False),
        sa.Column("crisis_score", sa.Float(), nullable=True),
        sa.Column("perception_models", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("conversation_id", "turn_index", name="uq_turn_per_conversation"),
        sa.UniqueConstraint("conversation_id", "message_id", name="uq_message_per_conversation"),
    )
    op.create_index("ix_empathy_turns_conversation_id", "empathy_turns", ["conversation_id"])
    op.create_table(
        "empathy_replies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("turn_id", sa.Integer(), sa.ForeignKey("empathy_turns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("response_name", sa.String(255), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("generator", sa.String(64), nullable=False),
        sa.Column("generator_version", sa.String(255), nullable=False),
        sa.Column("knowledge", sa.JSON(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_empathy_replies_turn_id", "empathy_replies", ["turn_id"])


def downgrade() -> None:
    op.drop_index("ix_empathy_replies_turn_id", table_name="empathy_replies")
    op.drop_table("empathy_replies")
    op.drop_index("ix_empathy_turns_conversation_id", table_name="empathy_turns")
    op.drop_table("empathy_turns")
    op.drop_index("ix_empathy_conversations_sender_id", table_name="empathy_conversations")
    op.drop_table("empathy_conversations")
