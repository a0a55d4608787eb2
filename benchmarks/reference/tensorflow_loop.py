"""The two-layer net as a TensorFlow 1 graph: placeholders, tf.gradients, assign ops, run by a Session.

TensorFlow 2 runs it through tf.compat.v1 inside an explicit tf.Graph (no process-wide switch to graph mode).
Only the Session's loop is timed."""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as the trainer: plain Eigen kernels, quiet and reproducible

import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1


def loop(x, y, weights: dict, lr: float, steps: int) -> tuple[float, list[float]]:
    graph = tf.Graph()
    with graph.as_default():
        x_in = v1.placeholder(x.dtype, shape=(None, x.shape[1]))
        y_in = v1.placeholder(y.dtype, shape=(None, y.shape[1]))
        w1, w2 = tf.Variable(weights["w1"]), tf.Variable(weights["w2"])
        out = tf.matmul(tf.nn.relu(tf.matmul(x_in, w1)), w2)
        loss = tf.reduce_sum(tf.square(out - y_in))
        d_w1, d_w2 = v1.gradients(loss, [w1, w2])
        update = [w1.assign_sub(lr * d_w1), w2.assign_sub(lr * d_w2)]
        init = v1.global_variables_initializer()
    losses = []
    with v1.Session(graph=graph) as session:
        session.run(init)
        feed = {x_in: x, y_in: y}
        start = time.perf_counter()
        for _ in range(steps):
            value, *_ = session.run([loss, *update], feed_dict=feed)
            losses.append(float(value))
        seconds = time.perf_counter() - start
    return seconds, losses


if __name__ == "__main__":
    from _problem import STEPS, report, tutorial_problem

    report(loop(*tutorial_problem(), lr=1e-6, steps=STEPS)[1])
