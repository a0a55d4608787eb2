"""The trainers, side by side: one module each, ``train(problem, settings, on_step, **objects) -> Result``
(backproplab.steps) with ``gradients`` and ``predict`` beside it,
reading like its tutorial example. What each one is and supports is declared in its own yaml,
``conf/trainer/<name>.yaml``; ``registry`` reads those files, so adding a trainer is its module + its yaml
(+ its test), and no other file names it.
"""
