"""Compare the runs of a sweep: loss curves (PNG) and a table (Markdown, CSV), logged to the parent run.

    python scripts/report.py                                  # the latest sweep in ./mlflow.db
    python scripts/report.py --parent <run id> --out reports/mine
    python scripts/report.py --tracking-uri http://127.0.0.1:5000 --experiment backproplab
"""

import sys

from backproplab.tracking.report import main

if __name__ == "__main__":
    sys.exit(main())
