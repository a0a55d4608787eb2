"""The benchmark: every trainer held against the project's own reference loop (benchmarks/reference/), MLflow's
cost, start-up and imports, the nine-example sweep against the nine reference processes, and scaling against a
bare ``torch.mm`` chain. Not part of the installed package; run it as ``python scripts/bench.py``.

- ``common``: settings, targets, timing helpers, fresh-process children
- ``loops``: each trainer's loop against its reference loop
- ``mlflow_cost``: the loop with MLflow against without, and MLflow's fixed cost per run
- ``processes``: whole-process start-up, imports, the sweep
- ``scaling``: step time against a bare torch.mm chain; torch.compile
- ``report``: the targets table and the Markdown; ``main``: the command line
"""
