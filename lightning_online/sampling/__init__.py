"""Parameter spaces, samplers and steering rules (numpy and scipy only: no torch, MPI or
Lightning).

* ``samplers``: :class:`ParameterSpace`, :class:`Sampler` and the space-filling samplers;
* ``steering``: the loss-driven samplers (:class:`Breed`, :class:`LossProportional`) and their
  statistics (:class:`SimulationStats`, :class:`SteeredSampler`);
* ``error_model``: :class:`ErrorModel`, and ``_gp``, the Gaussian process behind it.

Code here runs on the training thread of every rank, identically (each rank draws the same
parameters from an identical state).
"""

from __future__ import annotations

from lightning_online.sampling.error_model import ErrorModel
from lightning_online.sampling.samplers import (
    Halton,
    LatinHypercube,
    ParameterSpace,
    Sampler,
    Uniform,
    validation_points,
)
from lightning_online.sampling.steering import (
    Breed,
    LossProportional,
    SimulationStats,
    SteeredSampler,
)

__all__ = [
    "Breed",
    "ErrorModel",
    "Halton",
    "LatinHypercube",
    "LossProportional",
    "ParameterSpace",
    "Sampler",
    "SimulationStats",
    "SteeredSampler",
    "Uniform",
    "validation_points",
]
