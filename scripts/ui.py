"""MLflow's UI on this directory's store, opened where a person wants it: the experiment's runs table.

    python scripts/ui.py                     # = make ui
    python scripts/ui.py --port 5001 --experiment benchmarks

It prints the runs table's address (MLflow 3's UI otherwise opens an experiment on its GenAI view), then
becomes ``mlflow ui`` on the store that scripts/train.py writes by default.
"""

import argparse
import os
import shutil
import sys

from backproplab.tracking.ui import runs_table_address, store

if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="ui.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="backproplab", help="whose runs table to print (default: %(default)s)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    args = ap.parse_args()
    uri, artifacts = store()
    print(runs_table_address(uri, args.experiment, f"http://{args.host}:{args.port}"), flush=True)
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    os.execv(mlflow, cmd)
