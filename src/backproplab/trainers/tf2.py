"""TensorFlow 2: eager code traced into a graph by ``tf.function``, gradients by ``tf.GradientTape``.

What the TF1 graph could not do, this one does: the dynamic net's middle layer runs in a ``tf.range`` loop
inside the traced step (autograph makes it a ``tf.while_loop``), so the repeat count is a tensor fed at each
step and one graph serves every count. The optimizer is torch.optim's rule (backproplab/optimizers.py) applied
to the variables, not a Keras optimizer: Keras's Adam puts eps elsewhere, and optim=adam must mean one thing.
"""

from __future__ import annotations

import time

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
from omegaconf import DictConfig

from backproplab.forward import served_repeats
from backproplab.optimizers import rule
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result

MIDDLE = ("wm", "bm")  # the dynamic net's shared layer: no gradient at a step that skips it


def train(problem: Problem, cfg: DictConfig, on_step: OnStep) -> Result:
    set_threads(cfg.trainer.get("threads"))
    dtype = tf.float64 if problem.dtype == np.float64 else tf.float32
    reduce = tf.reduce_sum if cfg.loss.reduction == "sum" else tf.reduce_mean
    opt = rule(cfg, cfg.trainer.name)
    repeats = problem.repeats if problem.repeats is not None else np.zeros(cfg.trainer.max_steps, np.int32)

    with tf.device(place(cfg)):
        x, y = tf.constant(problem.x), tf.constant(problem.y)
        params = {name: tf.Variable(w, name=name) for name, w in problem.weights.items()}
        state = {n: {s: tf.Variable(tf.zeros_like(p)) for s in opt.slots} for n, p in params.items()}
        counts = {n: tf.Variable(tf.zeros((), dtype)) for n in params}  # torch.optim's per-parameter step
        w1, wm, w2 = params["w1"], params.get("wm"), params["w2"]
        # without model.bias a bias is a plain 0, which adds nothing
        b1, bm, b2 = (params.get(name, tf.zeros((), dtype)) for name in ("b1", "bm", "b2"))

        # lesson: step
        def forward(r: tf.Tensor) -> tf.Tensor:
            h_relu = tf.nn.relu(x @ w1 + b1)
            if wm is not None:
                for _ in tf.range(r):  # the dynamic net: a loop in the graph, its count a tensor
                    h_relu = tf.nn.relu(h_relu @ wm + bm)
            return h_relu @ w2 + b2

        def step(r: tf.Tensor, keep_grads: bool) -> tuple[tf.Tensor, list[tf.Tensor]]:
            with tf.GradientTape() as tape:
                loss = reduce(tf.square(forward(r) - y))
            grads = tape.gradient(loss, list(params.values()))
            for (name, p), g in zip(params.items(), grads, strict=True):
                g = tf.zeros_like(p) if g is None else g
                t = counts[name] + 1
                delta, new = opt.update(g, {s: v.read_value() for s, v in state[name].items()}, t, tf.sqrt)
                if name in MIDDLE:  # torch.optim leaves a parameter without a gradient alone: so does this
                    used = r > 0
                    delta = tf.where(used, delta, tf.zeros_like(delta))
                    new = {s: tf.where(used, v, state[name][s]) for s, v in new.items()}
                    t = tf.where(used, t, counts[name])
                p.assign_sub(delta)
                for s, v in new.items():
                    state[name][s].assign(v)
                if opt.slots:
                    counts[name].assign(t)
            return loss, (grads if keep_grads else [])
        # lesson: end

        # traced once each: the first step also hands back its gradients (verify's), the others only the loss
        traced = time.perf_counter()
        spec = tf.TensorSpec((), tf.int32)
        first = tf.function(lambda r: step(r, True)).get_concrete_function(spec)
        later = tf.function(lambda r: step(r, False)).get_concrete_function(spec)
        trace_s = time.perf_counter() - traced
        grads0: dict[str, np.ndarray] = {}
        start = time.perf_counter()
        # lesson: step
        for i in range(cfg.trainer.max_steps):
            loss, grads = (first if i == 0 else later)(tf.constant(int(repeats[i]), tf.int32))
            on_step(i, float(loss))
            # lesson: end
            if i == 0:
                grads0 = {n: (np.zeros(p.shape, p.dtype.as_numpy_dtype) if g is None else g.numpy())
                          for (n, p), g in zip(params.items(), grads, strict=True)}
        loop_s = time.perf_counter() - start
        outputs = forward(tf.constant(served_repeats(cfg.model), tf.int32)).numpy()  # what its model must predict
    weights = {n: p.numpy() for n, p in params.items()}
    return Result(weights=weights, loop_s=loop_s, grads0=grads0, timings={"compile_s": trace_s}, outputs=outputs)
