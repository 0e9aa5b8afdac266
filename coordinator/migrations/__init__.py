"""Alembic migrations of the coordinator's store (see ``coordinator.store.schema``).

A package so that its ``.py`` files ship with the distribution; ``script.py.mako`` ships
as package data.
"""
