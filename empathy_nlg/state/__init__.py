"""Conversation state in SQL: SQLAlchemy models, repository, Alembic migrations."""
