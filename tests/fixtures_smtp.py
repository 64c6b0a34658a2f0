"""Fixtures: smtp (filled in by the smtp work)."""
