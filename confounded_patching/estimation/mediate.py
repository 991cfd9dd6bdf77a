"""The deconfounded analysis of a model's nodes: ``mediate``.

``mediate(model, prompts, nodes, outcome)`` runs the whole pipeline of
Fotouhi et al. (arXiv 2412.02893) on a model:

1. one capture pass over the prompts
   (:func:`~confounded_patching.activations.capturing.collect`):
   every node's activation and the outcome metric on the last-position
   logits; the query embedding of each prompt comes from an independent
   sentence encoder (``query="sentence"``, the default: all-MiniLM-L6-v2,
   :mod:`~confounded_patching.models.encoder`, as the paper's RoBERTa), or
   from the model's own residual stream entering ``embed_layer`` averaged
   over the prompt's tokens (``query="model"``; nodes at or below that layer
   are upstream of their query's source and get no estimate), or user arrays;
2. the confounder: k-means topics of the query embeddings (``"kmeans"``,
   ``n_topics`` clusters), user topic labels, or continuous covariates;
3. the EB-AIE of every node, adjusted for the confounder and unadjusted,
   with the entropy-balancing problems batched across nodes and the same
   random pairs (common random numbers) for every node and both estimators
   (:func:`~.aie.aie_many`).

The result, :class:`MediationResult`, holds both tables of estimates and
diagnostics, the topics and the outcome, with ``to_dataframe()`` in long
form (one row per node and estimator) and ``save``/``load``.

Large runs: with ``store=DIR`` the capture pass writes an on-disk
:class:`~confounded_patching.activations.store.ActivationStore` (resuming an
interrupted capture) and the estimator reads it a chunk of nodes at a time
(:mod:`~.node_coords`), so the
activations of all nodes are never in memory together; the result equals
the in-memory one. ``device="cuda"`` runs the entropy-balancing solves on a
GPU (re-checked in float64 on the CPU). See ``docs/scale.md``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..activations import ActivationStore, Activations, check_nodes, collect
from ..errors import InputError, describe
from ..models import adapt
from ..models.tokens import as_id_lists, token_labels
from ..nodes import Node
from ..nodes import nodes as all_nodes
from ..results import EB_ADJUSTED, EB_UNADJUSTED, Result, check_array, check_nodes_field
from ..validation import check_bool, check_int, resolve_device
from .aie import aie_tables, check_prompt_count
from .aie_table import AIETable, mark_unidentified
from .confounders import is_labels, kmeans_topics
from .node_coords import rescaled
from .options import AIEOptions
from .partners import pair_index

__all__ = ["mediate", "MediationResult", "check_enough_prompts", "warn_if_degenerate", "QUERIES", "DEFAULT_QUERY"]

#: the query embeddings ``mediate`` can compute itself (or pass an array ``[m, D]``)
QUERIES = ("sentence", "model")
#: the default: it agreed better with the interventional AIE on SmolLM2 (docs/estimator.md)
DEFAULT_QUERY = "sentence"
#: keyword arguments of ``mediate`` that are not estimator settings passed through to ``aie_many``
_OWN = ("K", "gamma", "seed", "pairs", "device")
#: dimensions of a ``query="sentence"`` embedding (all-MiniLM-L6-v2)
SENTENCE_DIMS = 384


@dataclass(frozen=True)
class MediationResult(Result):
    """EB-AIE of many nodes, adjusted for a confounder and unadjusted.

    Attributes:
        nodes: the nodes, in the order given.
        adjusted: per-node estimates balancing the confounder (None without one).
        unadjusted: per-node estimates without the confounder (the "normal" estimator).
        topics: the confounder's topic label per prompt (None for covariates).
        outcome: the outcome per prompt ``[m]``.
        outcome_name: the metric's name, or ``"labels"``.
        query: how the query embedding was obtained.
        tokens: token labels (``tok_i``) of the first prompt, for position axes.
        settings: the estimator settings used.
    """

    nodes: list
    adjusted: AIETable | None
    unadjusted: AIETable
    topics: np.ndarray | None
    outcome: np.ndarray
    outcome_name: str
    query: str
    tokens: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def _check(self) -> None:
        """Each table has one row per node and ``outcome``/``topics`` one entry per prompt (run by ``load``)."""
        k = check_nodes_field("nodes", self.nodes)
        (m,) = check_array("outcome", self.outcome, (None,))
        check_array("topics", self.topics, (m,), optional=True)
        tables = {"adjusted": self.adjusted, "unadjusted": self.unadjusted}
        for name, table in tables.items():
            if table is not None and (not isinstance(table, AIETable) or len(table) != k):
                raise InputError(f"field {name!r} must be an AIETable of {k} nodes (one per node); received "
                                 f"{describe(table) if not isinstance(table, AIETable) else f'{len(table)} rows'}")
        if self.adjusted is None and self.unadjusted is None:
            raise InputError("fields 'adjusted' and 'unadjusted' are both empty")

    @property
    def value(self) -> np.ndarray:
        """Adjusted AIE per node (unadjusted when there is no confounder)."""
        return (self.adjusted or self.unadjusted).value

    @property
    def reliable(self) -> np.ndarray:
        """Per node, whether the adjusted value (unadjusted without a confounder) can be trusted (:mod:`~.reliability`)."""
        tab = self.adjusted or self.unadjusted
        return np.asarray(tab.reliable, dtype=bool) if tab.reliable is not None else np.isfinite(tab.value)

    @property
    def reason(self) -> list:
        """Per node, why its value is not reliable (``""`` when it is)."""
        tab = self.adjusted or self.unadjusted
        return list(tab.reason) if tab.reason is not None else [""] * len(self.nodes)

    def table(self, adjusted: bool = True) -> AIETable:
        return self.adjusted if adjusted and self.adjusted is not None else self.unadjusted

    def to_dataframe(self):
        """Long form: one row per node and estimator (``eb:adjusted``, ``eb:unadjusted``)."""
        import pandas as pd

        frames = []
        for name, tab in ((EB_ADJUSTED, self.adjusted), (EB_UNADJUSTED, self.unadjusted)):
            if tab is None:
                continue
            df = tab.to_dataframe()
            df["node"] = [n.label for n in self.nodes]
            df.insert(1, "kind", [n.kind for n in self.nodes])
            df.insert(2, "layer", [n.layer for n in self.nodes])
            df.insert(3, "head", [getattr(n, "head", None) for n in self.nodes])
            df.insert(4, "pos", [n.pos for n in self.nodes])
            df.insert(5, "method", name)
            df["metric"] = self.outcome_name
            frames.append(df)
        return pd.concat(frames, ignore_index=True)


def warn_if_degenerate(name: str, table: AIETable, *, share: float = 0.5, pair_ess: float = 1e-3,
                       stacklevel: int = 1) -> None:
    """Warn when most nodes' weights are infeasible or their pair weights are concentrated on a few pairs.

    ``stacklevel``: whose code the warning points at (1: the caller).
    """
    n = len(table.value)
    infeasible = sum(s == "infeasible" for s in table.status)
    with np.errstate(invalid="ignore"):
        tiny = int(np.sum(np.nan_to_num(table.pair_ess, nan=0.0) < pair_ess))
    if n and (infeasible > share * n or tiny > share * n):
        topics = ""
        if np.isfinite(table.ess_x):
            topics = (f" The topic model keeps an effective sample size of {table.ess_x:.0f} of {table.n} prompts: "
                      f"topics that barely overlap in query space have the same effect on the adjusted estimator, "
                      f"and more prompts do not add overlap.")
        warnings.warn(
            f"{name} EB-AIE: {infeasible} of {n} nodes have infeasible balance and {tiny} have pair-weight ESS "
            f"below {pair_ess:g} of n*K; these nodes' values are not reliable. A node that is close to a "
            f"deterministic function of the query leaves no overlap to reweight (positivity). Fewer dimensions "
            f"(d_q, d_n), more prompts, or a coarser query help; see cp.plot.diagnostics and docs/evidence.md.{topics}",
            stacklevel=stacklevel + 1,
        )


def _outcome_values(metric, outcome, acts: Activations, m: int) -> tuple[np.ndarray, str]:
    if metric is not None:
        if acts.outcome is None:
            raise InputError("activations hold no outcome; pass the metric to collect() or outcome labels here")
        return acts.outcome.numpy().astype(float), acts.meta.get("metric") or getattr(metric, "name", "metric")
    raw = outcome.detach().cpu().numpy() if isinstance(outcome, torch.Tensor) else outcome
    try:
        y = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        sample = next(iter(np.asarray(raw, dtype=object).ravel()), None)
        raise InputError(f"outcome as labels must be numbers, one per prompt (0/1 labels or a continuous metric); "
                         f"received {describe(outcome)} holding {sample!r}. Map the labels to numbers first, e.g. "
                         f"[1.0 if v == 'yes' else 0.0 for v in labels]") from None
    if y.shape != (m,):
        raise InputError(f"outcome as labels must have one value per prompt ({m}); received {describe(outcome)}")
    return y, "labels"


def _prompt_texts(prompts, tokenizer, m: int) -> list[str]:
    """The prompts as text for the sentence encoder (token ids decoded with ``tokenizer``)."""
    if prompts is None:
        raise InputError("query='sentence' embeds the prompts' text: pass prompts=... (or query='model' / an array)")
    items = prompts.tolist() if isinstance(prompts, (torch.Tensor, np.ndarray)) else list(prompts)
    if len(items) != m:
        raise InputError(f"prompts must have one entry per captured prompt ({m}); received {describe(prompts)}")
    if all(isinstance(p, str) for p in items):
        return items
    if tokenizer is None:
        raise InputError("query='sentence' needs the prompts as text, or a tokenizer to decode token ids")
    return [p if isinstance(p, str) else tokenizer.decode(list(p), skip_special_tokens=True) for p in items]


def check_enough_prompts(prompts, nodes, spec, query, confounder, n_topics: int, options: AIEOptions) -> None:
    """Raise before any forward pass if the prompts are too few for the estimator (:func:`~.aie.check_prompt_count`)
    or for ``n_topics`` k-means topics; arguments it cannot size yet are left to the later checks."""
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__"):
        return
    m = len(prompts)
    opts = options.resolved()
    if isinstance(query, str):
        d_q = SENTENCE_DIMS if query == "sentence" else spec.d_model
    else:
        shape = np.shape(query)
        if len(shape) in (1, 2) and shape[0] != m:
            raise InputError(f"query must have one row per prompt ({m}); received {describe(query)}")
        d_q = shape[1] if len(shape) == 2 else 1
    d_n = max(spec.node_dim(n.kind) for n in nodes)
    if isinstance(confounder, str):
        if m < 2 * n_topics:
            raise InputError(f"confounder='kmeans' with n_topics = {n_topics} needs at least 2 * n_topics = "
                             f"{2 * n_topics} prompts; received {m}")
        k = n_topics - 1
    elif confounder is None:
        k = 0
    else:
        arr = np.asarray(confounder.detach().cpu() if isinstance(confounder, torch.Tensor) else confounder)
        if arr.ndim not in (1, 2) or arr.shape[0] != m:
            return
        if is_labels(arr, opts.confounder_kind):
            k = len(np.unique(arr.astype(str))) - 1
        else:
            k = arr.shape[1] if arr.ndim == 2 else 1
    check_prompt_count(m, min(opts.d_q, d_q), min(opts.d_n, d_n) + k)


def _first_prompt_tokens(tokenizer, prompts) -> list[str]:
    """Token labels (``tok_i``) of the first prompt, for position axes; [] when unknown."""
    if prompts is None or tokenizer is None:
        return []
    try:
        first = as_id_lists(prompts if isinstance(prompts, torch.Tensor) else list(prompts)[:1], tokenizer)[0]
    except InputError:
        return []
    return token_labels(tokenizer, first)


def mediate(
    model,
    prompts,
    nodes: Sequence[Node] | None = None,
    outcome=None,
    *,
    confounder="kmeans",
    n_topics: int = 3,
    query="sentence",
    embed_layer: int | None = None,
    unadjusted: bool = True,
    K: int = 200,
    gamma="auto",
    seed: int = 0,
    batch_size: int = 32,
    tokenizer=None,
    progress: bool = True,
    remote=None,
    activations: Activations | ActivationStore | None = None,
    store=None,
    device=None,
    **aie_kwargs,
) -> MediationResult:
    """Deconfounded EB-AIE of every node, next to the unadjusted estimate.

    Args:
        model: nnsight, TransformerLens or HF model (with ``tokenizer``); may be
            None when ``activations`` are given.
        prompts: the prompts (strings or token ids); unused with ``activations``.
        nodes: nodes with integer positions (default: every MLP and head at
            the last position, ``cp.nodes(model, kinds=("mlp", "head"))``).
        outcome: a metric on last-position logits (e.g.
            ``cp.metrics.logit_diff(" he", " she")``), evaluated in the
            capture pass, or a vector of labels ``[m]`` (e.g. binary).
        confounder: ``"kmeans"`` (topics of the query embeddings), topic
            labels ``[m]``, covariates ``[m, k]``, or None (unadjusted only).
        n_topics: k for ``"kmeans"``.
        query: how each prompt's query embedding is obtained:
            ``"sentence"`` (default; None means the same): all-MiniLM-L6-v2
            sentence embeddings of the prompts
            (:func:`~confounded_patching.models.encoder.embed_sentences`, offline;
            token-id prompts are decoded with the tokenizer), an encoder
            independent of the model, as in the paper; ``"model"``: the model's
            residual stream entering ``embed_layer`` (default ``n_layers // 4``),
            averaged over each prompt's tokens. A node at layer ``l`` is computed
            from the query's source when ``l <= embed_layer`` (the query would be
            its descendant), so such nodes get ``nan``, status ``"unidentified"``
            and the reason; or an array ``[m, D]`` of your own.
        unadjusted: also compute the unadjusted ("normal") estimator.
        progress: progress bars for the capture pass and the estimator (over
            nodes).
        K, gamma, seed: see :func:`~.aie.aie_many`; other keyword
            arguments go there too (``variant``, ``estimator``, ``weights``,
            ``features``, ``d_q``, ``d_n``, ``n_boot`` ...).
        activations: a previous :func:`collect` result to reuse (must hold
            the nodes, and ``outcome``/``embedding`` unless given here): an
            :class:`~confounded_patching.activations.captured.Activations` in
            memory, or an :class:`~confounded_patching.activations.store.ActivationStore`
            read chunk by chunk.
        store: a directory for an on-disk activation store. With a model,
            the capture pass writes it (resuming an interrupted capture of
            the same prompts, nodes and settings); with ``model=None`` an
            existing store there is read. Either way the estimator streams
            it: memory grows with ``chunk_size x m x d_n``, not with
            ``n_nodes x m x d_model``.
        device: where the entropy-balancing solves run (None: CPU;
            ``"cuda"``); see :func:`~.aie.aie_many`.

    Returns:
        :class:`MediationResult`.

    Example::

        >>> res = mediate(model, data.prompts, cp.nodes(model, kinds=("mlp",)),
        ...               outcome=cp.metrics.logit_diff(" he", " she"), confounder=data.topics)
        >>> res.to_dataframe().head()
    """
    if store is not None and activations is not None:
        raise InputError("pass either activations=... or store=DIR, not both")
    if activations is not None and not isinstance(activations, (Activations, ActivationStore)):
        raise InputError(f"activations must be an Activations (from collect) or an ActivationStore (from "
                         f"collect(..., store=DIR)); received {describe(activations)}")
    if store is not None and not isinstance(store, str) and not hasattr(store, "__fspath__"):
        raise InputError(f"store must be a directory path (str or os.PathLike); received {describe(store)}")
    if model is None and activations is None and store is None:
        raise InputError("mediate needs a model, activations=... from a previous collect(), or store=DIR")
    check_int("seed", seed, minimum=0, expected="an int >= 0")
    check_int("n_topics", n_topics, minimum=2, expected="an int >= 2")
    check_bool("unadjusted", unadjusted)
    check_bool("progress", progress)
    unknown = sorted(set(aie_kwargs) - {f.name for f in dataclasses.fields(AIEOptions)} - set(_OWN))
    if unknown:
        raise InputError(f"mediate got unknown keyword argument(s) {unknown}; it takes the estimator's settings "
                         f"{sorted(f.name for f in dataclasses.fields(AIEOptions) if f.name not in _OWN)} "
                         f"(see help(cp.aie_many)) and its own arguments")
    if query is None:
        query = DEFAULT_QUERY
    if isinstance(query, str) and query not in QUERIES:
        raise InputError(f"query must be one of {QUERIES} or an array [prompts, dims]; received {query!r}")
    if isinstance(query, str) and query == "sentence":
        from ..models.encoder import minilm_zip

        minilm_zip()  # the sentence encoder must be installed: said before any forward pass, not after the capture
    device = resolve_device(device)
    if model is None and store is not None:
        activations = ActivationStore.open(store)
    if model is None:
        nodes = list(activations.nodes if nodes is None else nodes)
        n_layers = activations.meta.get("n_layers", 1)
    else:
        adapter = adapt(model, tokenizer)
        if nodes is None:
            nodes = all_nodes(n_layers=adapter.spec.n_layers, n_heads=adapter.spec.n_heads, kinds=("mlp", "head"))
        nodes = check_nodes(adapter, nodes)
        n_layers = adapter.spec.n_layers
    if outcome is None:
        raise InputError("outcome is required: a metric on last-position logits, or a vector of labels [m]")
    metric = outcome if callable(outcome) else None
    if embed_layer is None:
        embed_layer = n_layers // 4
    if activations is None:  # every check that the data allows before the capture's forward passes
        check_enough_prompts(prompts, nodes, adapter.spec, query, confounder, n_topics,
                              AIEOptions(K=K, gamma=gamma, seed=seed, device=device, **aie_kwargs))
        if metric is None and hasattr(prompts, "__len__") and not isinstance(prompts, (str, bytes)):
            _outcome_values(None, outcome, None, len(prompts))  # labels: numbers, one per prompt
        activations = collect(adapter, prompts, nodes, batch_size=batch_size, metric=metric,
                              embed_layer=embed_layer if isinstance(query, str) and query == "model" else None,
                              progress=progress, remote=remote, store=store)
    streamed = isinstance(activations, ActivationStore)
    if streamed:
        activations.check_complete("activations" if store is None else "store")
    missing = [n for n in nodes if n not in activations]
    if missing:
        raise InputError(f"activations do not hold {len(missing)} of the nodes, e.g. {missing[0]!r}")
    m = len(activations)
    y, outcome_name = _outcome_values(metric, outcome, activations, m)
    layer = None
    if isinstance(query, str) and query == "model":
        if activations.embedding is None:
            raise InputError("query='model': the activations hold no query embedding; collect them with "
                             "collect(..., embed_layer=...) or use query='sentence'")
        layer = activations.meta.get("embed_layer", embed_layer)
        q, query_name = activations.embedding, f"mean residual stream entering layer {layer}"
    elif isinstance(query, str):
        from ..models.encoder import ENCODER_NAME, embed_sentences

        texts = _prompt_texts(prompts, adapter.tokenizer if model is not None else tokenizer, m)
        q, query_name = embed_sentences(texts), f"sentence embedding ({ENCODER_NAME}, mean pooling)"
    else:
        q, query_name = query, "user arrays"
    topics = None
    if isinstance(confounder, str):
        if confounder != "kmeans":
            raise InputError(f"confounder must be 'kmeans', labels [m], covariates [m, k] or None; received "
                             f"{confounder!r}")
        qt = torch.as_tensor(np.asarray(q, dtype=np.float64)) if not isinstance(q, torch.Tensor) else q.double()
        if qt.ndim == 2 and qt.shape[0] == m and bool((rescaled(qt) == rescaled(qt)[:1]).all()):
            raise InputError("query is constant (every prompt has the same embedding): k-means topics cannot be "
                             "formed and no node's EB-AIE is identified; pass a query that varies")
        topics = kmeans_topics(q, k=n_topics, seed=seed)
        confounder = topics
    elif confounder is not None:
        arr = np.asarray(confounder)
        topics = arr if is_labels(arr) else None
    pairs = aie_kwargs.pop("pairs", None)
    if pairs is None:
        pairs = pair_index(m, K, seed)
    values = activations.select(nodes) if streamed else [activations[n] for n in nodes]
    options = AIEOptions(K=K, gamma=gamma, seed=seed, pairs=pairs, device=device, **aie_kwargs)
    wanted = ([confounder] if confounder is not None else []) + ([None] if (unadjusted or confounder is None) else [])
    # one pass over the nodes for both estimators
    tables = aie_tables(q, values, y, wanted, options, progress=progress, stacklevel=2)
    if layer is not None:  # the query must come from below every node it is used for
        above = np.array([n.layer <= layer for n in nodes])
        if above.any():
            why = [f"the query (residual stream entering layer {layer}) is computed from this node's output "
                   f"(layer {n.layer} <= {layer}); use query='sentence' or embed_layer < {n.layer}" for n in nodes]
            tables = [mark_unidentified(t, above, why) for t in tables]
            warnings.warn(f"query='model' at embed_layer={layer}: {int(above.sum())} of {len(nodes)} nodes lie at or "
                          f"below the query's layer and get no estimate (status 'unidentified'); use "
                          f"query='sentence' or a lower embed_layer", stacklevel=2)
    adj = tables[0] if confounder is not None else None
    unadj = tables[-1] if (unadjusted or confounder is None) else None
    for name, table in (("adjusted", adj), ("unadjusted", unadj)):
        if table is not None:
            warn_if_degenerate(name, table, stacklevel=2)
    tokens = _first_prompt_tokens(adapter.tokenizer if model is not None else None, prompts)
    settings = {"K": K, "gamma": gamma if isinstance(gamma, str) else float(gamma), "seed": seed,
                "n_topics": n_topics if topics is not None else None,
                "embed_layer": layer, "query": query if isinstance(query, str) else "arrays",
                **{k: v for k, v in aie_kwargs.items() if isinstance(v, (int, float, str, bool))}}
    return MediationResult(nodes=nodes, adjusted=adj, unadjusted=unadj,
                           topics=None if topics is None else np.asarray(topics).astype(str),
                           outcome=y, outcome_name=outcome_name, query=query_name, tokens=tokens, settings=settings)
