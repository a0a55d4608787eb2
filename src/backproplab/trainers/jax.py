"""JAX: the forward pass as a pure function, ``jax.value_and_grad`` for the backward pass, ``jax.jit`` to
compile the step and optax for the update.

The dynamic net's repeat count is a static argument: one compiled step per count (0..max_repeats), since
reverse-mode differentiation through a loop of traced length is not supported. All variants are compiled
before the loop (``time/compile_s``), so the loop's time is the steps' alone. float64 runs inside
``jax.enable_x64``, scoped to this run: the next job of a multirun gets JAX's default again. The harness builds
the optimizer's rule (``rule``); ``gradients`` (the first step's, for verify) and ``predict`` run the same passes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backproplab.optimizers import Rule
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result, Settings

# JAX announces at INFO that it found no TPU on every first use: not news on a CPU or GPU machine
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
MIDDLE = ("wm", "bm")  # the dynamic net's shared layer: no gradient at a step that skips it


def gpu_available() -> bool:
    return any(d.platform == "gpu" for d in jax.devices())


def transformation(opt: Rule) -> optax.GradientTransformation:
    """optax's own optimizer where it is torch.optim's math; otherwise the shared rule as an optax transformation."""
    h = opt.hyper
    if opt.name in ("sgd", "sgd_momentum"):  # optax.trace: buf = g + momentum * buf, as torch
        return optax.sgd(opt.lr, momentum=h["momentum"] or None)
    if opt.name == "adam":  # bias-corrected, eps outside the sqrt: torch's
        return optax.adam(opt.lr, b1=h["b1"], b2=h["b2"], eps=h["eps"])
    if opt.name == "rmsprop":  # optax's default puts eps inside the sqrt; torch's does not
        return optax.rmsprop(opt.lr, decay=h["alpha"], eps=h["eps"], eps_in_sqrt=False)
    # adagrad: optax's sums from 0.1 and puts eps inside the sqrt; torch's sums from 0, eps outside
    return from_rule(opt)


def from_rule(opt: Rule) -> optax.GradientTransformation:
    def init(p: jax.Array) -> Any:
        return {s: jnp.zeros_like(p) for s in opt.slots}, jnp.zeros((), p.dtype)

    def update(g: jax.Array, state: Any, params: Any = None) -> tuple[jax.Array, Any]:
        slots, count = state
        delta, new = opt.update(g, slots, count + 1, jnp.sqrt)
        return -delta, (new, count + 1)

    return optax.GradientTransformation(init, update)


Params = dict[str, jax.Array]
Forward = Callable[[Params, jax.Array, int], jax.Array]  # (params, x, repeats at this step) -> y_pred


# lesson: two_layer_net
def two_layer_net(params: Params, x: jax.Array, repeats: int = 0) -> jax.Array:
    h_relu = jax.nn.relu(x @ params["w1"] + params.get("b1", 0.0))
    return h_relu @ params["w2"] + params.get("b2", 0.0)
# lesson: end


# lesson: dynamic_net
def dynamic_net(params: Params, x: jax.Array, repeats: int) -> jax.Array:
    b1, bm, b2 = (params.get(name, 0.0) for name in ("b1", "bm", "b2"))
    h_relu = jax.nn.relu(x @ params["w1"] + b1)
    for _ in range(repeats):  # unrolled: one compiled variant per count
        h_relu = jax.nn.relu(h_relu @ params["wm"] + bm)
    return h_relu @ params["w2"] + b2
# lesson: end


PASSES: dict[str, Forward] = {"dynamic": dynamic_net}  # else: two_layer_net


@contextmanager
def scope(problem: Problem, settings: Settings) -> Iterator[None]:
    """The run's device and precision: float64 inside ``jax.enable_x64`` alone, one thread where the run says 1."""
    if settings.threads == 1:  # read when XLA's CPU backend starts (below, unless an earlier run did)
        flags = os.environ.get("XLA_FLAGS", "")
        if "multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    accelerator = settings.accelerator
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpu_available())
    device = jax.devices("gpu" if gpu else "cpu")[0]
    with jax.enable_x64(problem.dtype == np.float64), jax.default_device(device):
        yield


def train(problem: Problem, settings: Settings, on_step: OnStep, rule: Rule) -> Result:
    with scope(problem, settings):
        return _train(problem, settings, on_step, rule)


def _train(problem: Problem, settings: Settings, on_step: OnStep, rule: Rule) -> Result:
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
    params = {name: jnp.asarray(w) for name, w in problem.weights.items()}
    model = PASSES.get(settings.model, two_layer_net)
    tx = transformation(rule)
    state = {name: tx.init(p) for name, p in params.items()}  # one state per parameter, as torch.optim keeps
    reduce = jnp.sum if settings.reduction == "sum" else jnp.mean
    repeats = problem.repeats if problem.repeats is not None else np.zeros(settings.max_steps, int)

    # lesson: step
    def loss_fn(params: Params, repeats: int) -> jax.Array:
        return reduce((model(params, x, repeats) - y) ** 2)

    def step(params: Params, state: dict, repeats: int) -> tuple[Params, dict, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, repeats)
        new_params, new_state = {}, {}
        for name, p in params.items():
            updates, s = tx.update(grads[name], state[name], p)
            if name in MIDDLE and repeats == 0:  # torch.optim leaves a parameter without a gradient alone
                new_params[name], new_state[name] = p, state[name]
            else:
                new_params[name], new_state[name] = optax.apply_updates(p, updates), s
        return new_params, new_state, loss
    # lesson: end

    # the step's inputs are donated: XLA updates the weights and the optimizer's state in place
    compile_start = time.perf_counter()
    jitted = jax.jit(step, static_argnames=("repeats",), donate_argnums=(0, 1))
    compiled = {int(r): jitted.lower(params, state, repeats=int(r)).compile() for r in np.unique(repeats)}
    compile_s = time.perf_counter() - compile_start

    start = time.perf_counter()
    # lesson: step
    for t in range(settings.max_steps):
        params, state, loss = compiled[int(repeats[t])](params, state)
        on_step(t, float(loss))
    # lesson: end
    loop_s = time.perf_counter() - start
    weights = {name: np.asarray(p) for name, p in params.items()}
    return Result(weights=weights, loop_s=loop_s, timings={"compile_s": compile_s})


def gradients(problem: Problem, settings: Settings, rule: Rule | None = None) -> dict[str, np.ndarray]:
    """The first step's gradients, by the loop's pass and ``jax.grad``, compiled as the loop's step is (for
    verify); a layer unused at that step gets jax.grad's zeros."""
    model = PASSES.get(settings.model, two_layer_net)
    reduce = jnp.sum if settings.reduction == "sum" else jnp.mean
    repeats = int(problem.repeats[0]) if problem.repeats is not None else 0
    with scope(problem, settings):
        x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
        params = {name: jnp.asarray(w) for name, w in problem.weights.items()}

        def loss_fn(params: Params) -> jax.Array:
            return reduce((model(params, x, repeats) - y) ** 2)

        grads = jax.jit(jax.grad(loss_fn))(params)
        return {name: np.asarray(g) for name, g in grads.items()}


def predict(
    weights: dict[str, np.ndarray], problem: Problem, settings: Settings, rule: Rule | None = None
) -> np.ndarray:
    """This trainer's forward pass of ``weights`` on problem.x, at a dynamic model's served depth: what the
    logged model must predict."""
    model = PASSES.get(settings.model, two_layer_net)
    with scope(problem, settings):
        params = {name: jnp.asarray(w) for name, w in weights.items()}
        return np.asarray(model(params, jnp.asarray(problem.x), settings.served_repeats))
