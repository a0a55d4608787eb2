"""Hold every trainer, MLflow, start-up and the nine-example sweep against the tutorial's own code (issue 5).

    python scripts/bench.py                  # a few minutes on 2 cores; bench-results/bench.{json,md}
    python scripts/bench.py --quick          # CI settings, well under a minute
    python scripts/bench.py --mlflow         # also log it as a run of experiment `benchmarks`

The logic lives in backproplab/bench.py.
"""

from backproplab.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
