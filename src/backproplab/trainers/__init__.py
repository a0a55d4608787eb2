"""The trainers, side by side: one module each, ``train(problem, cfg, on_step) -> Result`` (backproplab.steps),
reading like its tutorial example. What each one is and supports is declared in its own yaml,
``conf/trainer/<name>.yaml``; ``registry`` reads those files, so adding a trainer is its module + its yaml
(+ its test), and no other file names it.
"""
