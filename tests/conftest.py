"""Shared pytest fixtures. Each concern keeps its fixture factories in its own plugin module."""

pytest_plugins = [
    "tests.fixtures_models",
    "tests.fixtures_db",
    "tests.fixtures_smtp",
    "tests.fixtures_retrain",
]
