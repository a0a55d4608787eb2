"""Every MLflow call of the project, one idea a module:

- ``store``: which store, opened with one clear error; sqlite's lock; the tags that link runs
- ``run``: one run's record (params, step batches, artifacts, status)
- ``logged_model``: a run's model as MLflow loads and serves it (``served``: the numpy one), and the Model Registry
- ``spool``: a run's writes as operations, sent with bounded retries or kept while the server is away; sync
- ``sweep``: the Hydra callback that gives a multirun its parent run, summary and report
- ``report``: a sweep's comparison (figure and tables); ``figures``: a run's own loss curve
- ``rerun``: a recorded run's config as the base of a new one; ``names``: run names and UI addresses;
  ``ui``: what ``make ui`` opens; ``lesson``: a sweep's code-beside-curve page; ``code``: a run's code/

Nothing here imports a trainer, and no trainer imports this (they speak backproplab.steps).
"""

from backproplab.tracking.logged_model import register_run
from backproplab.tracking.run import amend_reason, make_tracker, record_refusal
from backproplab.tracking.store import TrackingError, open_store

__all__ = ["TrackingError", "amend_reason", "make_tracker", "open_store", "record_refusal", "register_run"]
