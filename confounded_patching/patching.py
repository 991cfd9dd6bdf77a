"""Classic activation patching, attribution patching, and the resample (interventional) AIE.

Classic patching (Vig et al. 2020; Meng et al. 2022; Heimersheim & Nanda
2024) runs clean/corrupt prompt pairs of equal token length and, for each
node, copies the node's value from one run into the other:

- ``direction="denoise"``: the clean value into the corrupted run. Score
  ``(patched − corrupt) / (clean − corrupt)``: 0 = no recovery, 1 = the clean
  metric fully restored (sufficiency).
- ``direction="noise"``: the corrupted value into the clean run. Score
  ``(patched − clean) / (clean − corrupt)``: 0 = unharmed, −1 = the effect
  fully destroyed (necessity).

Many patches run in one forward pass: every (pair, node) combination is a
row of a batch, ``batch_size`` rows per pass.

``method="attribution"`` approximates every patch at once from the target
run's gradient (Nanda 2023; Syed et al. 2023): effect ≈ (source − target) ·
∂metric/∂node, from one forward per run and one backward.

``resample`` computes the resample ("interventional") average indirect
effect, the causal quantity the EB estimator targets, by brute force: for
random pairs (i, j) of prompts, run prompt i with the node set to its value
under prompt j; the AIE is the mean of y(i with n←n(j)) − y(i).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .activations import check_nodes
from .errors import InputError, describe
from .metrics import as_metric, evaluate, for_rows, logits_request
from .models import adapt
from .models.sites import Plan, Read, Write
from .models.tokens import TokenBatch, as_id_lists, columns, pad, token_labels, _pad_id
from .nodes import Node
from .progress import progress_counter
from .results import Result

__all__ = ["patch", "resample", "PatchingResult", "ResampleResult", "DIRECTIONS", "METHODS"]

DIRECTIONS = ("denoise", "noise")
METHODS = ("exact", "attribution")


@dataclass(frozen=True)
class PatchingResult(Result):
    """Classic patching scores for clean/corrupt pairs.

    Attributes:
        nodes: the nodes, in the order given.
        raw: patched metric ``[n_pairs, n_nodes]`` (attribution: its linear estimate).
        clean: metric of each clean run ``[n_pairs]``.
        corrupt: metric of each corrupted run ``[n_pairs]``.
        direction: ``"denoise"`` or ``"noise"``.
        method: ``"exact"`` or ``"attribution"``.
        metric: the metric's name.
        tokens: the first clean prompt's tokens (labels for position axes).
        clean_prompts, corrupt_prompts: the prompts when given as strings.
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
            base = {"node": node.label, "kind": node.kind, "layer": node.layer, "head": getattr(node, "head", None),
                    "pos": node.pos, "method": f"patch:{self.method}", "direction": self.direction,
                    "metric": self.metric}
            if per_pair:
                for p in range(self.raw.shape[0]):
                    rows.append({**base, "pair": p, "raw": float(self.raw[p, k]),
                                 "effect": float(self.effects[p, k]), "score": float(self.scores[p, k])})
            else:
                rows.append({**base, "value": float(self.score[k]), "effect": float(self.effects[:, k].mean()),
                             "n_pairs": int(self.raw.shape[0])})
        return pd.DataFrame(rows)


def _check_choice(name, value, choices):
    if value not in choices:
        raise InputError(f"{name} must be one of {choices}; received {value!r}")


def _check_pairs(clean_ids, corrupt_ids):
    if len(clean_ids) != len(corrupt_ids):
        raise InputError(f"clean and corrupt must have the same number of prompts; received {len(clean_ids)} "
                         f"and {len(corrupt_ids)}")
    for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)):
        if len(a) != len(b):
            raise InputError(f"pair {i}: clean and corrupt prompts must have equal token length; received "
                             f"{len(a)} and {len(b)} tokens")


def _full_reads(batch: TokenBatch, sites) -> Plan:
    plan = Plan()
    for kind, layer in sites:
        plan.add_read(kind, layer, Read((kind, layer), None, None))
    return plan


def _group_writes(rows, nodes, pair_of_row, node_of_row, source, col_of) -> list[tuple[str, int, Write]]:
    """Writes for patch rows grouped per (site, all-positions?) so each group is one indexing op."""
    groups = defaultdict(list)
    for r in rows:
        node = nodes[node_of_row[r]]
        groups[(node.kind, node.layer, node.pos is None)].append(r)
    writes = []
    for (kind, layer, all_pos), rs in groups.items():
        local = torch.as_tensor([r - rows[0] for r in rs])
        pairs = [pair_of_row[r] for r in rs]
        ns = [nodes[node_of_row[r]] for r in rs]
        heads = torch.as_tensor([n.head for n in ns]) if kind == "head" else None
        src = source[(kind, layer)]  # [pairs, seq, ...]
        if all_pos:
            vals = src[pairs]
            vals = vals[torch.arange(len(rs)), :, heads] if heads is not None else vals
            writes.append((kind, layer, Write(local, None, vals, heads)))
        else:
            cols = torch.as_tensor([col_of(n.pos) for n in ns])
            vals = src[pairs, cols]
            vals = vals[torch.arange(len(rs)), heads] if heads is not None else vals
            writes.append((kind, layer, Write(local, cols, vals, heads)))
    return writes


def patch(
    model,
    clean,
    corrupt,
    nodes: Sequence[Node] | None = None,
    metric=None,
    *,
    direction: str = "denoise",
    method: str = "exact",
    batch_size: int = 64,
    tokenizer=None,
    progress: bool = True,
    remote=None,
    prefix_cache: bool = True,
) -> PatchingResult:
    """Patch every node, for every clean/corrupt pair.

    Args:
        model: nnsight, TransformerLens or HF model (with ``tokenizer``).
        clean, corrupt: prompts (strings, LongTensor ``[pairs, seq]`` or id
            lists); pair ``i`` must have equal token lengths.
        nodes: nodes to patch (default: every node at the last position,
            ``cp.nodes(model)``). ``pos=None`` patches every position.
        metric: callable on last-position logits ``[batch, vocab] -> [batch]``
            (e.g. ``cp.metrics.logit_diff(" Paris", " Rome")``).
        direction: ``"denoise"`` (clean → corrupted run) or ``"noise"``.
        method: ``"exact"`` or ``"attribution"`` (gradient approximation).
        batch_size: patched rows per forward pass (bounds memory).
        prefix_cache: start each patched row at its node's layer, from the
            unpatched run's residual stream cached at that layer, instead of
            recomputing the identical earlier blocks (exact up to float
            rounding; about half the block FLOPs of a whole-model sweep).
            Needs a local nnsight or plain HF model whose blocks return a
            tensor; otherwise every row runs from the embeddings. Memory:
            pairs × tokens × d_model × layers of the patched run.
        remote: passed to nnsight's trace (``"local"`` for the serialisation
            dry run); turns ``prefix_cache`` off.

    Returns:
        :class:`PatchingResult`, with ``raw[pair, node]`` in the order of ``nodes``.
    """
    _check_choice("direction", direction, DIRECTIONS)
    _check_choice("method", method, METHODS)
    if metric is None:
        raise InputError("metric is required: a callable on last-position logits [batch, vocab] -> [batch], "
                         "e.g. cp.metrics.logit_diff(' Paris', ' Rome')")
    adapter = adapt(model, tokenizer)
    if nodes is None:
        from .nodes import nodes as all_nodes

        nodes = all_nodes(model if tokenizer is None else adapter)
    nodes = check_nodes(adapter, nodes, allow_all_positions=True)
    metric = as_metric(metric, adapter.tokenizer)
    want = logits_request(metric)
    if want == "full" and method == "attribution":
        raise InputError("method='attribution' needs a last-position metric; full_logits metrics need 'exact'")
    clean_ids = as_id_lists(clean, adapter.tokenizer, argument="clean")
    corrupt_ids = as_id_lists(corrupt, adapter.tokenizer, argument="corrupt")
    _check_pairs(clean_ids, corrupt_ids)
    for pos in {n.pos for n in nodes if n.pos is not None}:
        columns(pad(clean_ids, 0), pos)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int; received {describe(batch_size)}")

    n_pairs, pad_id = len(clean_ids), _pad_id(adapter.tokenizer)
    raw = np.zeros((n_pairs, len(nodes)))
    clean_m, corrupt_m = np.zeros(n_pairs), np.zeros(n_pairs)
    sites = sorted({(n.kind, n.layer) for n in nodes}, key=lambda s: (s[1], s[0]))
    start_layers = []
    if method == "exact" and prefix_cache and remote is None and adapter.can_start():
        start_layers = sorted({n.layer for n in nodes if n.layer > 0})
    by_length = defaultdict(list)
    for i, ids in enumerate(clean_ids):
        by_length[len(ids)].append(i)
    todo = sum(len(g) for g in by_length.values()) * (len(nodes) if method == "exact" else 1)
    bar = progress_counter(todo, progress, desc=f"patch ({method})", unit="patch")
    for length, group in by_length.items():
        cb = pad([clean_ids[i] for i in group], pad_id)
        xb = pad([corrupt_ids[i] for i in group], pad_id)
        source_b, target_b = (cb, xb) if direction == "denoise" else (xb, cb)
        if method == "exact":
            reads = _full_reads(source_b, sites)
            starts = Plan()  # the patched run's residual stream, where patched rows start
            for layer in start_layers:
                starts.add_read("resid", layer, Read(("start", layer), None, None))
            clean_reads, clean_logits = adapter.run(cb, reads if direction == "denoise" else starts, logits=want,
                                                    remote=remote)
            corrupt_reads, corrupt_logits = adapter.run(xb, reads if direction == "noise" else starts,
                                                        logits=want, remote=remote)
            src = clean_reads if direction == "denoise" else corrupt_reads
            hidden = corrupt_reads if direction == "denoise" else clean_reads
        else:
            src_acts, _ = adapter.run(source_b, _full_reads(source_b, sites), logits=False)
            _, clean_logits = adapter.run(cb, Plan())
            corrupt_logits = None
        clean_logits = clean_logits.float()
        ref = clean_logits if metric.needs_clean else None
        mask = cb.attention_mask
        clean_m[group] = evaluate(metric, clean_logits, ref, rows=group, mask=mask).cpu().numpy()
        if method == "attribution":
            row_metric = for_rows(metric, group)
            fn = lambda lg: row_metric(lg.float(), clean_logits if metric.needs_clean else None)
            tgt_acts, grads, tgt_logits = adapter.grad_run(target_b, sites, fn)
            target_m = evaluate(metric, tgt_logits.float(), ref, rows=group).cpu().numpy()
            if direction == "denoise":
                corrupt_m[group] = target_m
            else:
                clean_m[group] = target_m
                _, corrupt_logits = adapter.run(xb, Plan(), remote=remote)
                corrupt_m[group] = evaluate(metric, corrupt_logits.float(), ref, rows=group).cpu().numpy()
            raw[group] = target_m[:, None] + _attribution(nodes, src_acts, tgt_acts, grads, length)
            bar.update(len(group))
            continue
        corrupt_m[group] = evaluate(metric, corrupt_logits.float(), ref, rows=group, mask=mask).cpu().numpy()
        src = {k: v.detach() for k, v in src.items()}
        # rows in layer order, so a chunk's rows share (nearly) one starting layer
        rows = sorted(((p, k) for p in range(len(group)) for k in range(len(nodes))),
                      key=lambda r: (nodes[r[1]].layer, r[0]))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            # unpatched rows of the chunk's pairs go in the same forward: effects are measured against
            # them, so a patch that changes nothing gives zero up to the rounding of one batch (often exactly)
            base = sorted({p for p, _ in chunk})
            batch = target_b.repeat_rows(torch.as_tensor(base + [p for p, _ in chunk]))
            plan = Plan()
            idx = list(range(len(base), len(base) + len(chunk)))
            pair_of = {r: p for r, (p, _) in zip(idx, chunk)}
            node_of = {r: k for r, (_, k) in zip(idx, chunk)}
            col_of = lambda pos: pos if pos >= 0 else length + pos
            for kind, layer, write in _group_writes(idx, nodes, pair_of, node_of, src, col_of):
                write.rows = write.rows + len(base)
                plan.add_write(kind, layer, write)
            pairs_of_rows = base + [p for p, _ in chunk]
            first = min(nodes[k].layer for _, k in chunk)
            begin = (first, hidden[("start", first)][pairs_of_rows]) if first in start_layers else None
            _, logits = adapter.run(batch, plan, logits=want, remote=remote, start=begin)
            ref_rows = clean_logits[pairs_of_rows] if metric.needs_clean else None
            values = evaluate(metric, logits.float(), ref_rows, rows=[group[p] for p in pairs_of_rows],
                              mask=batch.attention_mask).cpu().numpy()
            unpatched = dict(zip(base, values[:len(base)]))
            target_m = corrupt_m if direction == "denoise" else clean_m
            for (p, k), v in zip(chunk, values[len(base):]):
                raw[group[p], k] = target_m[group[p]] + (v - unpatched[p])
            bar.update(len(chunk))
    bar.close()
    texts = lambda ps: list(ps) if isinstance(ps, (list, tuple)) and all(isinstance(p, str) for p in ps) else None
    tokens = token_labels(adapter.tokenizer, clean_ids[0])
    return PatchingResult(nodes=nodes, raw=raw, clean=clean_m, corrupt=corrupt_m, direction=direction,
                          method=method, metric=metric.name, tokens=tokens, clean_prompts=texts(clean),
                          corrupt_prompts=texts(corrupt))


def _attribution(nodes, src, tgt, grads, length) -> np.ndarray:
    """(source − target) · grad per pair and node ``[pairs, nodes]``."""
    out = []
    for node in nodes:
        key = (node.kind, node.layer)
        delta, g = src[key] - tgt[key], grads[key]
        if node.kind == "head":
            delta, g = delta[:, :, node.head], g[:, :, node.head]
        prod = (delta * g).sum(-1)  # [pairs, seq]
        out.append(prod.sum(-1) if node.pos is None else prod[:, node.pos if node.pos >= 0 else length + node.pos])
    return torch.stack(out, dim=1).float().cpu().numpy()


@dataclass(frozen=True)
class ResampleResult(Result):
    """Resample (interventional) AIE per node.

    Attributes:
        nodes: the nodes.
        effects: ``y(i with n←n(j)) − y(i)`` per pair and node ``[n_pairs, n_nodes]``.
        pairs: the (i, j) prompt indices ``[n_pairs, 2]``, shared by every node.
        baseline: ``y(i)`` per prompt ``[n_prompts]``.
        outcome: the outcome metric's name.
        stratified: True if j was drawn from i's stratum.
    """

    nodes: list
    effects: np.ndarray
    pairs: np.ndarray
    baseline: np.ndarray
    outcome: str
    stratified: bool = False

    @property
    def value(self) -> np.ndarray:
        """AIE per node: mean effect over pairs ``[n_nodes]``."""
        return self.effects.mean(0)

    @property
    def se(self) -> np.ndarray:
        """Standard error of the AIE per node (pairs taken as independent draws)."""
        n = self.effects.shape[0]
        return self.effects.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(len(self.nodes), np.nan)

    def to_dataframe(self):
        import pandas as pd

        method = "resample:stratified" if self.stratified else "resample"
        return pd.DataFrame([{"node": n.label, "kind": n.kind, "layer": n.layer, "head": getattr(n, "head", None),
                              "pos": n.pos, "method": method, "value": float(v), "se": float(s),
                              "n_pairs": int(self.effects.shape[0]), "metric": self.outcome}
                             for n, v, s in zip(self.nodes, self.value, self.se)])


def _residual_cache(adapter, prompts, id_lists, layers, pad_id, remote) -> dict:
    """Each prompt's residual stream (real tokens only) at the input of each of ``layers``."""
    if not layers:
        return {}
    unique = sorted(set(prompts))
    batch = pad([id_lists[i] for i in unique], pad_id)
    plan = Plan()
    for layer in layers:
        plan.add_read("resid", layer, Read(layer, None, None))
    reads, _ = adapter.run(batch, plan, logits=False, remote=remote)
    first, lengths = batch.first.tolist(), batch.lengths.tolist()
    return {(i, layer): reads[layer][r, first[r]:first[r] + lengths[r]]
            for r, i in enumerate(unique) for layer in layers}


def _stack_cache(cache, layer, prompts, batch: TokenBatch) -> torch.Tensor:
    """Cached residuals of ``prompts`` laid out as ``batch`` (zeros at padding)."""
    first, lengths = batch.first.tolist(), batch.lengths.tolist()
    sample = cache[(prompts[0], layer)]
    out = sample.new_zeros((len(prompts), batch.input_ids.shape[1], sample.shape[-1]))
    for r, i in enumerate(prompts):
        out[r, first[r]:first[r] + lengths[r]] = cache[(i, layer)]
    return out


def draw_pairs(n_prompts: int, n_pairs: int, strata=None, seed: int = 0) -> np.ndarray:
    """Random ordered pairs (i, j), j ≠ i; with ``strata``, j shares i's stratum."""
    rng = np.random.default_rng(seed)
    if strata is None:
        i = rng.integers(0, n_prompts, n_pairs)
        j = (i + rng.integers(1, n_prompts, n_pairs)) % n_prompts
        return np.stack([i, j], 1)
    strata = np.asarray(strata)
    if strata.shape != (n_prompts,):
        raise InputError(f"strata must have one label per prompt ({n_prompts}); received {describe(strata)}")
    members = {s: np.flatnonzero(strata == s) for s in np.unique(strata)}
    groups = [m for m in members.values() if len(m) > 1]
    if not groups:
        raise InputError("strata: every stratum has a single prompt, so no within-stratum pair exists")
    i = rng.choice(np.concatenate(groups), n_pairs)
    out = np.empty((n_pairs, 2), dtype=np.int64)
    for k, a in enumerate(i):
        m = members[strata[a]]
        b = m[rng.integers(0, len(m) - 1)]
        out[k] = (a, b if b != a else m[-1])
    return out


def resample(
    model,
    prompts,
    nodes: Sequence[Node],
    outcome,
    *,
    n_pairs: int = 200,
    strata=None,
    seed: int = 0,
    pairs=None,
    batch_size: int = 64,
    tokenizer=None,
    progress: bool = True,
    remote=None,
    prefix_cache: bool = True,
) -> ResampleResult:
    """Resample AIE: run prompt i with the node set to its value under prompt j.

    For ``n_pairs`` random ordered pairs (i, j), j ≠ i (and in i's stratum
    when ``strata`` is given), and for every node n, computes
    ``y(i with n←n(j)) − y(i)``; the AIE of n is its mean over pairs. The
    same pairs serve every node. Positions align from the end of each prompt,
    so prompts of different lengths pair up.

    ``prefix_cache`` starts each row at its node's layer from prompt i's
    cached residual stream, as in :func:`patch`.

    Returns:
        :class:`ResampleResult` (``value`` and ``se`` per node).
    """
    from .activations import collect

    adapter = adapt(model, tokenizer)
    nodes = check_nodes(adapter, nodes)
    outcome = as_metric(outcome, adapter.tokenizer, argument="outcome")
    if outcome.needs_clean:
        raise InputError(f"outcome {outcome.name!r} compares with a clean run; resample has none")
    id_lists = as_id_lists(prompts, adapter.tokenizer)
    if len(id_lists) < 2:
        raise InputError(f"prompts must hold at least 2 prompts to form pairs; received {len(id_lists)}")
    if pairs is None:
        if not isinstance(n_pairs, int) or n_pairs < 1:
            raise InputError(f"n_pairs must be a positive int; received {describe(n_pairs)}")
        pairs = draw_pairs(len(id_lists), n_pairs, strata, seed)
    pairs = np.asarray(pairs, dtype=np.int64)
    acts = collect(adapter, id_lists, nodes, batch_size=batch_size, metric=outcome, progress=False, remote=remote)
    baseline = acts.outcome.numpy().astype(float)
    values = {n: acts[n] for n in nodes}
    pad_id = _pad_id(adapter.tokenizer)
    layers = []
    if prefix_cache and remote is None and adapter.can_start():
        layers = sorted({n.layer for n in nodes if n.layer > 0})
    order = np.argsort([len(id_lists[i]) for i in pairs[:, 0]], kind="stable")
    effects = np.zeros((len(pairs), len(nodes)))
    # blocks of pairs (in length order): their prompts' residual streams are cached for the block only
    block = max(1, 4 * batch_size // max(1, len(nodes)))
    n_batches = sum(-(-len(order[b:b + block]) * len(nodes) // batch_size) for b in range(0, len(order), block))
    bar = progress_counter(n_batches, progress, desc="resample", unit="batch")
    for b0 in range(0, len(order), block):
        ks = [int(k) for k in order[b0:b0 + block]]
        cache = _residual_cache(adapter, [int(pairs[k, 0]) for k in ks], id_lists, layers, pad_id, remote)
        rows = sorted(((k, n) for k in ks for n in range(len(nodes))),
                      key=lambda r: (nodes[r[1]].layer, len(id_lists[pairs[r[0], 0]])))
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            base = sorted({int(pairs[k, 0]) for k, _ in chunk})  # unpatched rows in the same forward
            rows_i = base + [int(pairs[k, 0]) for k, _ in chunk]
            batch = pad([id_lists[i] for i in rows_i], pad_id)
            plan = Plan()
            groups = defaultdict(list)
            for r, (k, n) in enumerate(chunk, start=len(base)):
                groups[(nodes[n].kind, nodes[n].layer, nodes[n].pos)].append((r, k, n))
            for (kind, layer, pos), items in groups.items():
                rws = torch.as_tensor([r for r, _, _ in items])
                cols = columns(batch, pos, rows=rws)
                vals = torch.stack([values[nodes[n]][pairs[k, 1]] for _, k, n in items])
                heads = torch.as_tensor([nodes[n].head for _, _, n in items]) if kind == "head" else None
                plan.add_write(kind, layer, Write(rws, cols, vals, heads))
            first = min(nodes[n].layer for _, n in chunk)
            begin = (first, _stack_cache(cache, first, rows_i, batch)) if first in layers else None
            _, logits = adapter.run(batch, plan, logits=logits_request(outcome), remote=remote, start=begin)
            y = evaluate(outcome, logits.float(), argument="outcome", rows=rows_i,
                         mask=batch.attention_mask.to(logits.device)).cpu().numpy()
            unpatched = dict(zip(base, y[:len(base)]))
            for (k, n), v in zip(chunk, y[len(base):]):
                effects[k, n] = v - unpatched[int(pairs[k, 0])]
            bar.update(1)
    bar.close()
    return ResampleResult(nodes=nodes, effects=effects, pairs=pairs, baseline=baseline, outcome=outcome.name,
                          stratified=strata is not None)
