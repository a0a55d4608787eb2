"""Defining new autograd functions: the autograd example with the tutorial's own Functions
(backproplab/functions.py): ``MyReLU.apply`` in place of ``clamp(min=0)`` in the two-layer and dynamic nets, and,
in the sine edition, ``LegendrePolynomial3.apply`` as P3 in a + b P3(c + d x).

The tutorial's example is the autograd example with that one line changed, so this trainer runs the
autograd trainer's loop (trainers/autograd.py) with its Functions rather than copying it; its first step's
gradients and its predictions are autograd's too, with the same Functions.
"""

from __future__ import annotations

import numpy as np

from backproplab.functions import LegendrePolynomial3, MyReLU
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result, Settings
from backproplab.trainers import autograd

# use our custom functions
FUNCTIONS = {"relu": MyReLU.apply, "p3": LegendrePolynomial3.apply}


def train(problem: Problem, settings: Settings, on_step: OnStep) -> Result:
    return autograd.train(problem, settings, on_step, **FUNCTIONS)


def gradients(problem: Problem, settings: Settings) -> dict[str, np.ndarray]:
    return autograd.gradients(problem, settings, **FUNCTIONS)


def predict(weights: dict[str, np.ndarray], problem: Problem, settings: Settings) -> np.ndarray:
    return autograd.predict(weights, problem, settings, **FUNCTIONS)
