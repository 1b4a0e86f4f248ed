"""Metadata: the SQLite database of files, contents and failures, its schema owned by Alembic migrations.

Every SQL query of the project lives in this package.
"""
