"""Hold every trainer, MLflow and start-up against the project's own reference loops (benchmarks/).

    python scripts/bench.py            # a few minutes on 2 cores; bench-results/bench.{json,md}
    python scripts/bench.py --quick    # what the test suite runs
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmark lives beside the package, not in it

from benchmarks.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
