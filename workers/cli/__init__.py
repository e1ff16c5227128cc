"""The ``llmfleet`` command line: the group (``main``) and one module per command family."""

from workers.cli.main import cli, main

__all__ = ["cli", "main"]
