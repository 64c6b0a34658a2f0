"""Fixtures: db (filled in by the db work)."""
