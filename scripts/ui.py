"""MLflow's UI on this directory's store, opened where a person wants it: the experiment's runs table.

    python scripts/ui.py                     # = make ui
    python scripts/ui.py --port 5001 --experiment benchmarks

It prints the runs table's address (MLflow 3's UI otherwise opens an experiment on its GenAI view), then
runs ``mlflow ui`` on the store that scripts/train.py writes by default, until Ctrl-C or SIGTERM, which stop it
and every process it started. With MLFLOW_TRACKING_URI set to a tracking server it prints that server's address
and starts nothing.
"""

import argparse
import os
import signal
import sys

from backproplab.tracking.ui import plan, serve

if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="ui.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="backproplab", help="whose runs table to print (default: %(default)s)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    args = ap.parse_args()
    try:
        lines, command = plan(args.experiment, args.host, args.port)
    except KeyboardInterrupt:  # Ctrl-C before anything was started
        sys.exit(130)
    print("\n".join(lines), flush=True)
    if command:
        status, stopped_by = serve(command)
        if stopped_by is not None:  # die of the same signal, so that make and the shell see how it ended
            signal.signal(stopped_by, signal.SIG_DFL)
            os.kill(os.getpid(), stopped_by)
        sys.exit(status if status >= 0 else 128 - status)  # mlflow ui killed by a signal: as a shell says
