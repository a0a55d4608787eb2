"""TensorFlow 2: eager code traced into a graph by ``tf.function``, gradients by ``tf.GradientTape``.

What the TF1 graph could not do, this one does: the dynamic net's middle layer runs in a ``tf.range`` loop
inside the traced step (autograph makes it a ``tf.while_loop``), so the repeat count is a tensor fed at each
step and one graph serves every count. The optimizer is torch.optim's rule (backproplab/optimizers.py) applied
to the variables, not a Keras optimizer: Keras's Adam puts eps elsewhere, and optim=adam must mean one thing.
The harness builds that rule (``rule``); ``gradients`` (the first step's, for verify) and ``predict`` run the same
passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# isort: off
# first: the TF1 trainer's module sets TensorFlow's environment (quiet, no oneDNN) before TensorFlow is imported
from backproplab.trainers.tensorflow import (  # noqa: F401  (gpu_available, built_for_gpu: validation)
    built_for_gpu,
    gpu_available,
    place,
    set_threads,
)
import tensorflow as tf
# isort: on

import numpy as np

from backproplab.optimizers import Rule
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result, Settings

MIDDLE = ("wm", "bm")  # the dynamic net's shared layer: no gradient at a step that skips it
Params = dict[str, tf.Variable]
Forward = Callable[[Params, tf.Tensor, tf.Tensor], tf.Tensor]  # (params, x, repeats at this step) -> y_pred


# lesson: two_layer_net
def two_layer_net(params: Params, x: tf.Tensor, repeats: tf.Tensor) -> tf.Tensor:
    h_relu = tf.nn.relu(x @ params["w1"] + params.get("b1", 0.0))
    return h_relu @ params["w2"] + params.get("b2", 0.0)
# lesson: end


# lesson: dynamic_net
def dynamic_net(params: Params, x: tf.Tensor, repeats: tf.Tensor) -> tf.Tensor:
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    h_relu = tf.nn.relu(x @ params["w1"] + b1)
    for _ in tf.range(repeats):  # a loop in the graph (autograph's tf.while_loop), its count a tensor
        h_relu = tf.nn.relu(h_relu @ params["wm"] + bm)
    return h_relu @ params["w2"] + b2
# lesson: end


PASSES: dict[str, Forward] = {"dynamic": dynamic_net}  # else: two_layer_net


def _loss(settings: Settings) -> Callable[[tf.Tensor], tf.Tensor]:
    return tf.reduce_sum if settings.reduction == "sum" else tf.reduce_mean


def train(problem: Problem, settings: Settings, on_step: OnStep, rule: Rule) -> Result:
    set_threads(settings.threads)
    dtype = tf.float64 if problem.dtype == np.float64 else tf.float32
    model = PASSES.get(settings.model, two_layer_net)
    reduce = _loss(settings)
    opt = rule
    repeats = problem.repeats if problem.repeats is not None else np.zeros(settings.max_steps, np.int32)

    with tf.device(place(settings.accelerator)):
        x, y = tf.constant(problem.x), tf.constant(problem.y)
        params = {name: tf.Variable(w, name=name) for name, w in problem.weights.items()}
        state = {n: {s: tf.Variable(tf.zeros_like(p)) for s in opt.slots} for n, p in params.items()}
        counts = {n: tf.Variable(tf.zeros((), dtype)) for n in params}  # torch.optim's per-parameter step

        # lesson: step
        def step(r: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                loss = reduce(tf.square(model(params, x, r) - y))
            grads = tape.gradient(loss, list(params.values()))
            for (name, p), g in zip(params.items(), grads, strict=True):
                g = tf.zeros_like(p) if g is None else g
                count = counts[name] + 1
                delta, new = opt.update(g, {s: v.read_value() for s, v in state[name].items()}, count, tf.sqrt)
                if name in MIDDLE:  # torch.optim leaves a parameter without a gradient alone: so does this
                    used = r > 0
                    delta = tf.where(used, delta, tf.zeros_like(delta))
                    new = {s: tf.where(used, v, state[name][s]) for s, v in new.items()}
                    count = tf.where(used, count, counts[name])
                p.assign_sub(delta)
                for s, v in new.items():
                    state[name][s].assign(v)
                if opt.slots:
                    counts[name].assign(count)
            return loss
        # lesson: end

        # traced once, before the loop: one graph for every repeat count
        traced = time.perf_counter()
        compiled = tf.function(step).get_concrete_function(tf.TensorSpec((), tf.int32))
        trace_s = time.perf_counter() - traced
        start = time.perf_counter()
        # lesson: step
        for t in range(settings.max_steps):
            loss = compiled(tf.constant(int(repeats[t]), tf.int32))
            on_step(t, float(loss))
        # lesson: end
        loop_s = time.perf_counter() - start
    weights = {n: p.numpy() for n, p in params.items()}
    return Result(weights=weights, loop_s=loop_s, timings={"compile_s": trace_s})


def gradients(problem: Problem, settings: Settings, rule: Rule | None = None) -> dict[str, np.ndarray]:
    """The first step's gradients, by the loop's pass and GradientTape, traced as the loop's step is (for verify);
    a layer unused at that step: 0."""
    set_threads(settings.threads)
    model = PASSES.get(settings.model, two_layer_net)
    reduce = _loss(settings)
    repeats = int(problem.repeats[0]) if problem.repeats is not None else 0
    with tf.device(place(settings.accelerator)):
        x, y = tf.constant(problem.x), tf.constant(problem.y)
        params = {name: tf.Variable(w, name=name) for name, w in problem.weights.items()}

        @tf.function
        def first(r: tf.Tensor) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                loss = reduce(tf.square(model(params, x, r) - y))
            grads = tape.gradient(loss, list(params.values()))
            return [tf.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)]

        grads = first(tf.constant(repeats, tf.int32))
    return {name: g.numpy() for name, g in zip(params, grads, strict=True)}


def predict(
    weights: dict[str, np.ndarray], problem: Problem, settings: Settings, rule: Rule | None = None
) -> np.ndarray:
    """This trainer's forward pass of ``weights`` on problem.x, at a dynamic model's served depth: what the
    logged model must predict."""
    set_threads(settings.threads)
    model = PASSES.get(settings.model, two_layer_net)
    with tf.device(place(settings.accelerator)):
        params = {name: tf.Variable(w, name=name) for name, w in weights.items()}
        return model(params, tf.constant(problem.x), tf.constant(settings.served_repeats, tf.int32)).numpy()
