"""``python -m benchmarks``: the same as scripts/bench.py (the benchmark's children run this way)."""

import sys

from benchmarks.main import main

sys.exit(main())
