"""The ``orchestrator`` command line: :mod:`~orchestrator.cli.main` builds the parser from one
module per command group; :mod:`~orchestrator.cli.common` holds the exit codes, the parser
class and the printing they share."""

from orchestrator.cli.main import main

__all__ = ["main"]
