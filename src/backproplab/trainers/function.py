"""Defining new autograd functions: the autograd example, with the tutorial's
own ReLU, ``MyReLU.apply`` (backproplab/functions.py), in place of ``clamp(min=0)``.

The tutorial's example is the autograd example with that one line changed, so this trainer runs the
autograd trainer's loop (trainers/autograd.py) with ``relu = MyReLU.apply`` rather than copying it.
"""

from __future__ import annotations

from omegaconf import DictConfig

from backproplab.functions import MyReLU
from backproplab.problem import Problem
from backproplab.steps import OnStep, Result
from backproplab.trainers import autograd


def train(problem: Problem, cfg: DictConfig, on_step: OnStep) -> Result:
    relu = MyReLU.apply  # use our custom function
    return autograd.train(problem, cfg, on_step, relu=relu)
