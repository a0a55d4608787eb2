"""Slurm, through Hydra's submitit launcher (``hydra/launcher=slurm``), in two halves:

- ``submit``: the launching process. What each job asks Slurm for (from its trainer's keys), sbatch's refusals as
  one line naming the ``hydra.launcher.*`` key, and the wait for the jobs: job states from squeue (a cluster
  without accounting works too), Ctrl-C cancelling them.
- ``job``: inside a job. Which job this is, whether Slurm is requeueing it, and the note that lets a restarted
  job resume into the MLflow run it started.

The Hydra plugin itself (``hydra_plugins.backproplab_launcher``) is a thin subclass of submitit's launcher
that calls ``submit``.
"""
