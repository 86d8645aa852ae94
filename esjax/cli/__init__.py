"""The ``esjax`` command: ``commands`` (the subcommands and ``main``), ``args`` (argument types and the one-line
error parser), ``analyze`` (the ``analyze`` subcommand). ``python -m esjax.cli`` is the same command."""

from esjax.cli.commands import main

__all__ = ["main"]
