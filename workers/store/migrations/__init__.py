"""Alembic migrations of the fleet's tables, shipped inside the package."""
