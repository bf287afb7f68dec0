"""``python -m orchestrator.benchmarks``: run every registered benchmark."""

import sys

from orchestrator.benchmarks.runner import main

sys.exit(main())
