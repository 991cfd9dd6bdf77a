"""Clean/corrupt prompt pairs: the checked inputs of classic and attribution patching, and their result.

Classic patching (Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda
2024) runs clean/corrupt prompt pairs of equal token length and, for each
node, copies the node's value from one run into the other:

- ``direction="denoise"``: the clean value into the corrupted run. Score
  ``(patched − corrupt) / (clean − corrupt)``: 0 = no recovery, 1 = the clean
  metric fully restored (sufficiency).
- ``direction="noise"``: the corrupted value into the clean run. Score
  ``(patched − clean) / (clean − corrupt)``: 0 = unharmed, −1 = the effect
  fully destroyed (necessity).

:func:`prepare` checks the arguments of :func:`~.patching.patch` and
:func:`~.attribution.attribution_patch` once; both return a
:class:`PatchingResult`.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..activations.capturing import check_nodes, check_prompts
from ..errors import InputError, describe
from ..metrics import Metric, as_metric, logits_request
from ..models import adapt
from ..models.tokens import pad_id, token_labels
from ..nodes import nodes as all_nodes
from ..results import Result, check_array, check_nodes_field, node_columns, patch_tag
from ..validation import check_choice, check_int, check_positions

__all__ = ["PatchingResult", "PatchInputs", "prepare", "DIRECTIONS", "METHODS", "NODE_METHODS"]

DIRECTIONS = ("denoise", "noise")
METHODS = ("exact", "attribution", "auto")
#: what a node may be computed by (``PatchingResult.methods``)
NODE_METHODS = ("exact", "attribution")


@dataclass(frozen=True)
class PatchingResult(Result):
    """Classic patching scores for clean/corrupt pairs.

    Attributes:
        nodes: the nodes, in the order given.
        raw: patched metric ``[n_pairs, n_nodes]`` (attribution: its linear estimate).
        clean: metric of each clean run ``[n_pairs]``.
        corrupt: metric of each corrupted run ``[n_pairs]``.
        direction: ``"denoise"`` or ``"noise"``.
        method: ``"exact"``, ``"attribution"``, or ``"auto"`` (some nodes each way; see ``methods``).
        metric: the metric's name.
        tokens: the first clean prompt's tokens (labels for position axes).
        clean_prompts, corrupt_prompts: the prompts when given as strings.
        methods: how each node was computed (``"exact"`` or ``"attribution"``); None: every node by
            ``method``.
    """

    nodes: list
    raw: np.ndarray
    clean: np.ndarray
    corrupt: np.ndarray
    direction: str
    method: str
    metric: str
    tokens: list = field(default_factory=list)
    clean_prompts: list | None = None
    corrupt_prompts: list | None = None
    methods: list | None = None

    def _check(self) -> None:
        """Shapes agree: ``raw`` is ``[n_pairs, n_nodes]``, ``clean`` and ``corrupt`` ``[n_pairs]`` (run by ``load``)."""
        k = check_nodes_field("nodes", self.nodes)
        (p,) = check_array("clean", self.clean, (None,))
        check_array("corrupt", self.corrupt, (p,))
        check_array("raw", self.raw, (p, k))
        if self.direction not in DIRECTIONS or self.method not in METHODS:
            raise InputError(f"fields direction and method must be in {DIRECTIONS} and {METHODS}; received "
                             f"{self.direction!r} and {self.method!r}")
        if self.methods is not None and (len(self.methods) != k or not set(self.methods) <= set(NODE_METHODS)):
            raise InputError(f"field 'methods' must name 'exact' or 'attribution' for each of the {k} nodes; "
                             f"received {describe(self.methods)}")
        if self.method == "auto" and self.methods is None:
            raise InputError("field 'methods' is required when method is 'auto' (how each node was computed)")
        if self.methods is not None and self.method != "auto" and set(self.methods) != {self.method}:
            raise InputError(f"field 'methods' must all be {self.method!r} when method is {self.method!r}; "
                             f"received {sorted(set(self.methods))}")

    @property
    def node_methods(self) -> list:
        """How each node was computed: ``"exact"`` or ``"attribution"``."""
        return list(self.methods) if self.methods is not None else [self.method] * len(self.nodes)

    @property
    def target(self) -> np.ndarray:
        """Metric of the run that was patched (corrupt when denoising, clean when noising)."""
        return self.corrupt if self.direction == "denoise" else self.clean

    @property
    def effects(self) -> np.ndarray:
        """Patched − unpatched metric per pair and node ``[n_pairs, n_nodes]``."""
        return self.raw - self.target[:, None]

    @property
    def scores(self) -> np.ndarray:
        """Per-pair normalized scores ``[n_pairs, n_nodes]`` (NaN where clean == corrupt)."""
        gap = (self.clean - self.corrupt)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap != 0, self.effects / np.where(gap != 0, gap, 1), np.nan)

    @property
    def score(self) -> np.ndarray:
        """Normalized score per node, ratio of means: mean effect / mean(clean − corrupt) ``[n_nodes]``."""
        gap = float(np.mean(self.clean - self.corrupt))
        return self.effects.mean(0) / gap if gap != 0 else np.full(len(self.nodes), np.nan)

    @property
    def normalization(self) -> str:
        if self.direction == "denoise":
            return "(patched − corrupt) / (clean − corrupt)"
        return "(patched − clean) / (clean − corrupt)"

    def to_dataframe(self, per_pair: bool = False):
        """Long form: one row per node (or per node and pair with ``per_pair=True``)."""
        import pandas as pd

        rows = []
        for k, node in enumerate(self.nodes):
            base = {**node_columns(node), "method": patch_tag(self.method), "direction": self.direction,
                    "metric": self.metric, "computed": self.node_methods[k]}
            if per_pair:
                for p in range(self.raw.shape[0]):
                    rows.append({**base, "pair": p, "raw": float(self.raw[p, k]),
                                 "effect": float(self.effects[p, k]), "score": float(self.scores[p, k])})
            else:
                rows.append({**base, "value": float(self.score[k]), "effect": float(self.effects[:, k].mean()),
                             "n_pairs": int(self.raw.shape[0])})
        return pd.DataFrame(rows)


@dataclass
class PatchInputs:
    """Checked arguments of a patching run: the adapter, nodes, bound metric and token ids of the pairs."""

    adapter: object
    nodes: list
    metric: Metric
    clean: object  # the prompts as given, for the result
    corrupt: object
    clean_ids: list
    corrupt_ids: list
    direction: str

    @property
    def fill_id(self) -> int:
        return pad_id(self.adapter.tokenizer)

    def by_length(self) -> dict:
        """Pair indices grouped by token length (each group runs as one unpadded batch)."""
        groups = defaultdict(list)
        for i, ids in enumerate(self.clean_ids):
            groups[len(ids)].append(i)
        return groups

    def result(self, raw, clean, corrupt, method: str, methods: list | None = None) -> PatchingResult:
        identical = all(a == b for a, b in zip(self.clean_ids, self.corrupt_ids))  # warned about by prepare
        if not identical and float(np.mean(clean - corrupt)) == 0:
            warnings.warn(f"metric {self.metric.name!r} is the same on the clean and the corrupt prompts on average "
                          "(mean clean − corrupt = 0), so the normalized score is NaN for every node; the effects "
                          "(patched − unpatched) are in .effects", UserWarning, stacklevel=3)
        texts = lambda ps: list(ps) if isinstance(ps, (list, tuple)) and all(isinstance(p, str) for p in ps) else None
        return PatchingResult(nodes=self.nodes, raw=raw, clean=clean, corrupt=corrupt, direction=self.direction,
                              method=method, metric=self.metric.name,
                              tokens=token_labels(self.adapter.tokenizer, self.clean_ids[0]),
                              clean_prompts=texts(self.clean), corrupt_prompts=texts(self.corrupt), methods=methods)


def _check_equal_lengths(clean_ids, corrupt_ids) -> None:
    if len(clean_ids) != len(corrupt_ids):
        raise InputError(f"clean and corrupt must have the same number of prompts; received {len(clean_ids)} "
                         f"and {len(corrupt_ids)}")
    for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)):
        if len(a) != len(b):
            raise InputError(f"pair {i}: clean and corrupt prompts must have equal token length; received "
                             f"{len(a)} and {len(b)} tokens")


def prepare(model, clean, corrupt, nodes, metric, *, direction: str, method: str, batch_size=None, tokenizer=None
            ) -> PatchInputs:
    """Check the arguments of :func:`~.patching.patch` (see there); nodes default to ``cp.nodes(model)``."""
    check_choice("direction", direction, DIRECTIONS)
    check_choice("method", method, METHODS)
    if metric is None:
        raise InputError("metric is required: a callable on last-position logits [batch, vocab] -> [batch], "
                         "e.g. cp.metrics.logit_diff(' Paris', ' Rome')")
    adapter = adapt(model, tokenizer)
    if nodes is None:
        nodes = all_nodes(model if tokenizer is None else adapter)
    nodes = check_nodes(adapter, nodes, allow_all_positions=True)
    metric = as_metric(metric, adapter.tokenizer, vocab_size=adapter.spec.vocab_size)
    if logits_request(metric) == "full" and method in ("attribution", "auto"):
        raise InputError(f"method={method!r} needs a last-position metric (attribution patching); full_logits "
                         "metrics need 'exact'")
    if batch_size is not None:  # attribution patching runs whole groups of pairs
        check_int("batch_size", batch_size, minimum=1, expected="a positive int")
    clean_ids = check_prompts(adapter, clean, argument="clean")
    corrupt_ids = check_prompts(adapter, corrupt, argument="corrupt")
    _check_equal_lengths(clean_ids, corrupt_ids)
    check_positions(clean_ids, nodes, argument="clean")
    same = [i for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)) if a == b]
    if same:
        warnings.warn(f"clean and corrupt are the same prompt in {len(same)} of {len(clean_ids)} pair(s) "
                      f"{same[:5]}{' ...' if len(same) > 5 else ''}: clean − corrupt is 0 there, so patching changes "
                      "nothing and the normalized scores are NaN", UserWarning, stacklevel=3)
    return PatchInputs(adapter, nodes, metric, clean, corrupt, clean_ids, corrupt_ids, direction)
