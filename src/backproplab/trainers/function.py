"""Defining new autograd functions: the autograd example with the tutorial's own Functions
(backproplab/functions.py): ``MyReLU.apply`` in place of ``clamp(min=0)`` in the two-layer net, and, in the
sine edition, ``LegendrePolynomial3.apply`` as P3 in a + b P3(c + d x).

The tutorial's example is the autograd example with that one line changed, so this trainer runs the
autograd trainer's loop (trainers/autograd.py) with its Functions rather than copying it.
"""

from __future__ import annotations

from omegaconf import DictConfig

from backproplab.functions import LegendrePolynomial3, MyReLU
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result
from backproplab.trainers import autograd


def train(problem: Problem, cfg: DictConfig, on_step: OnStep) -> Result:
    # use our custom functions
    return autograd.train(problem, cfg, on_step, relu=MyReLU.apply, p3=LegendrePolynomial3.apply)
