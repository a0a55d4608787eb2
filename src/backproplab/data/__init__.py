"""The problem families, one module per ``conf/data/<name>.yaml``: each has ``make(cfg) -> Problem``."""
