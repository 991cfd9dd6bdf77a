"""Planted-truth designs shared by the estimator's tests: settings and fixtures.

``FAST`` keeps each fit to about a second (d = 2); ``sem`` is a Gaussian-topic SEM whose AIE is
``-tr(C B Sigma_Q)`` for the causal node and 0 for the topic-only node; ``sem_table`` is its
``aie_many`` table. Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from confounded_patching.estimation import simulate as S
from confounded_patching.estimation.aie import aie_many


FAST = dict(d_q=2, d_n=2, K=100, n_boot=200)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def sem():
    return S.gaussian_sem(m=2000, d_q=2, d_n=2, strength=0.5, confounding=0.5, seed=102)


@pytest.fixture(scope="module")
def sem_strong():
    """Topic-only node strongly correlated with the query through the topic."""
    return S.gaussian_sem(m=2000, d_q=2, d_n=2, strength=1.0, confounding=0.5, seed=102)


@pytest.fixture(scope="module")
def sem_table(sem):
    return aie_many(sem.query, sem.nodes, sem.outcome, sem.topics, **FAST)


def clusters(m=300, D=40, k=3, sep=5.0, seed=0):
    """``m`` rows in ``k`` separated clusters of width ``D``, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), m // k)
    centres = np.eye(k, D) * sep
    return centres[labels] + rng.normal(size=(m, D)), labels
