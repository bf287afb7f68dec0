"""``python -m orchestrator``: the same command line as ``orchestrator``."""

import sys

from orchestrator.cli import main

sys.exit(main())
