"""Complete a run whose tracking server went away: send what it kept in its spool, once the server is back.

    python scripts/sync.py outputs/2026-11-28/09-30-00/spool
    python scripts/sync.py <spool> --tracking-uri http://mlflow.example:5000     # the server moved

Safe to run twice: what was sent is noted in the spool, and nothing is sent twice.
"""

import sys

from backproplab.tracking.spool import main

if __name__ == "__main__":
    sys.exit(main())
