"""TensorFlow: static graphs. The graph is built once: placeholders for x and y, the
forward pass, ``tf.gradients`` and the ``assign`` updates; a Session then runs it at every step.

TensorFlow 2 runs the TF1 code through ``tf.compat.v1`` inside an explicit ``tf.Graph()`` (no global
``disable_eager_execution()``, which would change TensorFlow for the whole process). The weights start
from problem.py's arrays like every other trainer's. Only the two-layer net: a static graph has no
per-step Python control flow for the dynamic net. ``gradients`` (the first step's, for verify) and ``predict``
build the same graph (:func:`build`) in a session of their own.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter (CUDA probes, ...)
# TF's oneDNN custom CPU ops announce on stderr that they may change the numerical results; plain Eigen
# kernels are quiet and reproducible, and as fast at the tutorial's size (set it to 1 to have oneDNN)
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backproplab.problem import Problem  # noqa: E402
from backproplab.steps import OnStep, Result, Settings  # noqa: E402

tf1 = tf.compat.v1


def gpu_available() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def built_for_gpu() -> bool:
    """False for tensorflow-cpu (the [tf] extra), which never sees a GPU; the [tf-gpu] extra's build can."""
    return bool(tf.test.is_built_with_cuda())


def set_threads(threads: int | None) -> None:
    """TF's own thread pools: the run's count (``trainer.threads``, chosen by backproplab.threads; None or 0: TF's
    own choice), unless TF's runtime has started already (an earlier job of an in-process sweep): it keeps its
    pools."""
    if threads:
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)


def place(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda", "auto") and gpu_available():
        return "/GPU:0"
    return "/CPU:0"


class Net(NamedTuple):
    """The graph of one run and the tensors a session runs or feeds."""

    graph: tf.Graph
    x: tf.Tensor
    y: tf.Tensor
    params: dict[str, tf.Variable]
    y_pred: tf.Tensor
    loss: tf.Tensor
    grads: dict[str, tf.Tensor]
    updates: list[tf.Tensor]
    init: tf.Operation


def build(weights: dict[str, np.ndarray], problem: Problem, settings: Settings) -> Net:
    """The tutorial's graph, its Variables starting at ``weights``."""
    dtype = tf.float64 if problem.dtype == np.float64 else tf.float32
    d_in, d_out = problem.x.shape[1], problem.y.shape[1]
    reduce = tf.reduce_sum if settings.reduction == "sum" else tf.reduce_mean
    learning_rate = settings.lr

    # First we set up the computational graph
    g = tf.Graph()
    with g.as_default(), g.device(place(settings.accelerator)):
        tf1.set_random_seed(settings.seed)  # the weights come from problem.py; this seeds any op that draws

        # lesson: graph
        # Placeholders for the input and target data; these will be filled with real data at each step
        x = tf1.placeholder(dtype, shape=(None, d_in))
        y = tf1.placeholder(dtype, shape=(None, d_out))

        # Variables for the weights, initialised from the problem's arrays
        params = {name: tf1.Variable(w, name=name) for name, w in weights.items()}
        w1, w2 = params["w1"], params["w2"]
        # without model.bias a bias is a plain 0, which adds nothing
        b1, b2 = (params.get(name, 0.0) for name in ("b1", "b2"))

        # Forward pass: compute the predicted y (this only builds the graph; nothing is computed yet)
        h = tf.matmul(x, w1) + b1
        h_relu = tf.maximum(h, tf.zeros(1, dtype))
        y_pred = tf.matmul(h_relu, w2) + b2

        # Compute loss using operations on TensorFlow Tensors
        loss = reduce((y - y_pred) ** 2.0)

        # Compute gradient of the loss with respect to the weights
        grads = dict(zip(params, tf.gradients(loss, list(params.values())), strict=True))

        # Update the weights inside the graph. The updates wait for the loss and the gradients, so that
        # every step reads the weights before it writes them (the tutorial's sess.run leaves this open).
        with tf.control_dependencies([loss, *grads.values()]):
            updates = [w.assign(w - learning_rate * grads[name]) for name, w in params.items()]
        # lesson: end
        init = tf1.global_variables_initializer()
    return Net(g, x, y, params, y_pred, loss, grads, updates, init)


def session(net: Net, settings: Settings) -> tf1.Session:
    """A session on ``net``'s graph, its Variables initialised, with the run's thread count (0: TF's own)."""
    threads = settings.threads or 0
    config = tf1.ConfigProto(allow_soft_placement=True, intra_op_parallelism_threads=threads,
                             inter_op_parallelism_threads=threads)
    sess = tf1.Session(graph=net.graph, config=config)
    sess.run(net.init)
    return sess


def train(problem: Problem, settings: Settings, on_step: OnStep) -> Result:
    net = build(problem.weights, problem, settings)
    loss, updates = net.loss, net.updates
    feed_dict = {net.x: problem.x, net.y: problem.y}

    # Now we have built our graph, so we enter a TensorFlow session to actually execute it
    with session(net, settings) as sess:
        start = time.perf_counter()
        # lesson: step
        for t in range(settings.max_steps):
            # Execute the graph: compute loss and update the weights in one run
            loss_value, _ = sess.run([loss, updates], feed_dict=feed_dict)
            on_step(t, float(loss_value))
        # lesson: end
        loop_s = time.perf_counter() - start
        weights = sess.run(net.params)
    return Result(weights=weights, loop_s=loop_s)


def gradients(problem: Problem, settings: Settings) -> dict[str, np.ndarray]:
    """The first step's gradients, by the graph's own ``tf.gradients`` (for verify)."""
    net = build(problem.weights, problem, settings)
    with session(net, settings) as sess:
        return sess.run(net.grads, feed_dict={net.x: problem.x, net.y: problem.y})


def predict(weights: dict[str, np.ndarray], problem: Problem, settings: Settings) -> np.ndarray:
    """The graph's forward pass of ``weights`` on problem.x: what the logged model must predict."""
    net = build(weights, problem, settings)
    with session(net, settings) as sess:
        return sess.run(net.y_pred, feed_dict={net.x: problem.x})
