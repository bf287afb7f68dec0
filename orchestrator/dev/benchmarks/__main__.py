"""``python -m orchestrator.dev.benchmarks``: run every registered benchmark."""

import sys

from orchestrator.dev.benchmarks.runner import main

sys.exit(main())
