"""backproplab's Hydra sweeper plugin: ``hydra/sweeper=backproplab`` (conf/hydra/sweeper/backproplab.yaml), the
default."""
