"""confounded_patching: activation patching next to a deconfounded indirect effect.

Public names, by stage of the pipeline (``docs/layout.md`` maps each to its module):

- nodes: ``MLP``, ``Head``, ``Resid``, ``nodes``
- activations: ``collect``, ``capture``, ``Activations``, ``ActivationStore`` (on disk)
- interventions: ``patch``, ``resample``, ``confirm``, ``ablate``, ``ablation_curve`` and their results
- estimation: ``EntropyBalancer``, ``balance_features``, ``aie``, ``aie_many``, ``mediate`` and their results
- modules: ``metrics``, ``models``, ``datasets``, ``plot``, ``simulate``, ``pipeline``, ``cli``

Importing the package loads neither torch, plotly, nnsight, transformers nor any model: every name
above is imported on first use.
"""

from __future__ import annotations

import importlib

from .errors import ArchitectureError, ConfoundedPatchingError, InputError, ModelFileNotFound
from .nodes import MLP, Head, Resid, nodes

__version__ = "0.1.0"

# name -> module that defines it; imported on first use to keep `import` light.
_LAZY = {
    "collect": "activations.capturing",
    "capture": "activations.capturing",
    "Activations": "activations.captured",
    "ActivationStore": "activations.store",
    "patch": "interventions.patching",
    "resample": "interventions.resample",
    "PatchingResult": "interventions.clean_corrupt",
    "ResampleResult": "interventions.resample",
    "confirm": "interventions.confirm",
    "Confirmation": "interventions.confirm",
    "ablate": "interventions.ablation",
    "ablation_curve": "interventions.ablation",
    "AblationResult": "interventions.ablation",
    "EntropyBalancer": "estimation.balancer",
    "balance_features": "estimation.features",
    "aie": "estimation.aie",
    "aie_many": "estimation.aie",
    "AIEResult": "estimation.aie_table",
    "AIETable": "estimation.aie_table",
    "mediate": "estimation.mediate",
    "MediationResult": "estimation.mediate",
}
# name -> the module ``cp.<name>`` is (``topics`` is deprecated: its functions moved to ``estimation``)
_SUBMODULES = {
    "metrics": "metrics",
    "plot": "plot",
    "datasets": "datasets",
    "models": "models",
    "simulate": "estimation.simulate",
    "pipeline": "pipeline",
    "topics": "topics",
    "cli": "cli",
}

__all__ = [
    "ConfoundedPatchingError",
    "InputError",
    "ArchitectureError",
    "ModelFileNotFound",
    "MLP",
    "Head",
    "Resid",
    "nodes",
    *_LAZY,
    *_SUBMODULES,
]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    raise AttributeError(f"module 'confounded_patching' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
