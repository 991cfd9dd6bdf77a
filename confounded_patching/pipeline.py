"""The whole analysis, from a model and prompts to results and an offline HTML report.

Steps, each saying in the log, the settings and the report which method it used:

- ``patch``: classic patching on clean/corrupt pairs; by default (``patch_method="auto"``, ``cp.patch``'s
  :data:`~.interventions.patching.AUTO`) attribution patching for attention heads and MLPs and exact patching
  for the residual stream;
- ``resample``: the interventional (resample) AIE of every node, donors drawn within each prompt's topic
  (``strata``), by default ``method="auto"`` (heads to first order, MLPs and the residual stream exactly);
- ``confirm``: the exact resample AIE of the first-order nodes with the largest values and of a random sample
  of the others, with their agreement and a verdict (:func:`~.interventions.confirm.confirm`);
- ``mediate``: the EB-AIE, adjusted and unadjusted, on every node.

Everything that can be checked without a forward pass (positions, context, prompts enough for the EB-AIE's
dimensions, topics with at least two prompts) is checked before the first one. :func:`run` writes into
a folder ``report.html`` (self-contained, offline), each result as
``NAME.npz`` (``Result.load``) and ``NAME.csv`` (its ``to_dataframe()``),
the prompts used (``dataset.jsonl``) and ``settings.json``; the files appear
only when every step succeeded. The command line's ``demo`` and ``run``
sub-commands (:mod:`~.cli`) parse their options into :class:`Options` and
call :func:`run`; so can Python code::

    >>> from confounded_patching import pipeline
    >>> pipeline.run(pipeline.Options(n_pairs=4, steps=("patch", "mediate")), "demo_out")

Bad input (an unknown model path, a malformed JSONL line, prompts too short
for the node positions ...) raises :class:`UsageError` or
:class:`~.errors.ConfoundedPatchingError` before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import datasets, metrics
from .errors import InputError, ModelFileNotFound, Terminated, sigterm_as_interrupt
from .estimation.mediate import check_enough_prompts, mediate
from .estimation.options import AIEOptions
from .estimation.reliability import ReliabilityRule
from .interventions.confirm import confirm
from .interventions.patching import patch
from .interventions.resample import draw_pairs, resample, strata_codes
from .models import adapt, smollm2
from .models.encoder import minilm_zip
from .nodes import nodes as all_nodes
from .nodes import sort_key
from .report import write_report
from .validation import check_token_ids

__all__ = ["Options", "run", "run_steps", "UsageError", "STEPS", "Log", "load_model", "load_dataset",
           "precheck_model", "precheck_dataset", "select_nodes", "precheck_sizes", "PATCH_METHODS",
           "RESAMPLE_METHODS"]

PROG = "confounded-patching"
STEPS = ("patch", "resample", "confirm", "mediate")
PATCH_METHODS = ("auto", "exact", "attribution")
RESAMPLE_METHODS = ("auto", "exact", "attribution")
#: The EB-AIE's default principal components of the query and of each node (``cp.aie_many``'s d_q, d_n).
EB_DIMS = 25


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


@dataclass(frozen=True)
class Options:
    """What to run. The defaults are the ``demo`` command's (and the defaults of ``run``).

    With SmolLM2 (390 nodes: 30 MLPs and 270 heads at -1, the residual stream at -3, -2, -1) and 200
    professions prompts, see the README for the demo's measured time per step.

    Attributes:
        command: ``"demo"`` or ``"run"`` (named in the title and the settings).
        model: a local Hugging Face model folder, a hub name, or ``"smollm2"`` (the embedded model).
        dataset: a built-in set name or a ``.jsonl`` file (:func:`~.datasets.from_jsonl`).
        kinds, positions, resid_positions: the nodes (positions of MLPs and heads; of the residual stream).
        steps: any of :data:`STEPS`; a step the dataset cannot support is skipped with a note.
        patch_method: ``cp.patch``'s method: ``"auto"`` (heads and MLPs by attribution, the residual stream
            exactly), ``"exact"`` or ``"attribution"``.
        resample_method: ``"auto"`` (heads to first order, MLPs and residual stream exactly), ``"exact"`` or
            ``"attribution"``; resample_nodes: None for every node, or a random sample of that many.
        stratify: donors of the resample AIE from the prompt's own topic (when the dataset has topics).
        confirm_top, confirm_random: nodes of the resample AIE confirmed exactly (largest |value|; at random).
        n_prompts, n_pairs, resample_pairs, confounder, n_topics, K, dims, n_boot,
        batch_size, seed, answer, wrong_answer: as the command line's options of the same names.
        title: the report's title; quiet: no progress bars or stage messages.
    """

    command: str = "demo"
    model: str = "smollm2"
    dataset: str = "professions"
    kinds: tuple = ("mlp", "head", "resid")
    positions: tuple = (-1,)
    resid_positions: tuple = (-3, -2, -1)
    steps: tuple = STEPS
    n_prompts: int = 200
    n_pairs: int = 8
    patch_method: str = "auto"
    resample_method: str = "auto"
    resample_nodes: int | None = None
    resample_pairs: int = 16
    stratify: bool = True
    confirm_top: int = 30
    confirm_random: int = 30
    confounder: str = "auto"
    n_topics: int = 3
    K: int = 100
    dims: int | None = None
    n_boot: int = 100
    batch_size: int = 64
    seed: int = 0
    answer: str | None = None
    wrong_answer: str | None = None
    title: str | None = None
    quiet: bool = False


class Log:
    """Stage messages on stderr, with the seconds since the start (silent when ``quiet``)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.time() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- model and data


def _is_hub_name(name: str) -> bool:
    """``name`` or ``org/name`` (what the hub accepts), not a path such as ``./x`` or ``/a/b``."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name)) and ".." not in name


def precheck_model(name: str) -> None:
    """Fail fast on a model argument that is neither an existing folder, 'smollm2' nor a hub name."""
    if name.lower() in ("smollm2", "embedded"):
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UsageError(f"--model {name}: not a Hugging Face model folder (expected a directory with "
                             "config.json, weights and tokenizer files, as written by save_pretrained)")
    elif not _is_hub_name(name):
        raise UsageError(f"--model {name}: no such model folder")


def load_model(name: str):
    """(model, tokenizer) from 'smollm2', a local folder or a hub name; UsageError when it cannot."""
    if name.lower() in ("smollm2", "embedded"):
        try:
            return smollm2(backend="hf")
        except ModelFileNotFound as err:
            raise UsageError(str(err).replace("\n", " ")) from None
    precheck_model(name)
    path = Path(name).expanduser()
    local = path.exists()
    source = str(path) if local else name
    # here, not at the top: transformers takes seconds to import, and --help and the embedded model do without
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except Exception as err:  # transformers raises OSError, ValueError, EnvironmentError ... for bad folders
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "folder" if local else "hub name (not a local folder; is it cached or reachable?)"
        raise UsageError(f"--model {name}: could not load this {where}: {first}") from None
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def precheck_dataset(name: str):
    """Fail fast on a bad dataset argument, before the model is loaded."""
    if name in datasets.BUILTIN:
        return None
    path = Path(name).expanduser()
    if path.suffix != ".jsonl" and not path.exists():
        raise UsageError(f"--dataset {name}: expected a built-in set ({', '.join(datasets.BUILTIN)}) or a .jsonl "
                         "file")
    if not path.is_file():
        raise UsageError(f"--dataset {name}: no such file")
    return datasets.from_jsonl(path)  # raises InputError "file:line: ..." on a malformed line


def load_dataset(name: str, tokenizer, n_prompts: int, seed: int):
    """A built-in set or a ``.jsonl`` file, drawn down to ``n_prompts`` prompts."""
    if name in datasets.BUILTIN:
        data = datasets.BUILTIN[name](n=None, seed=seed, tokenizer=tokenizer)
    else:
        data = datasets.from_jsonl(Path(name).expanduser(), tokenizer=tokenizer)
    if len(data) > n_prompts:
        data = data.subset(n_prompts, seed)
    return data


def select_nodes(model, options: Options) -> list:
    """The nodes of ``options.kinds``: MLPs and heads at ``positions``, the residual stream at ``resid_positions``."""
    out = []
    other = [k for k in options.kinds if k != "resid"]
    if other:
        out += all_nodes(model, kinds=other, positions=options.positions)
    if "resid" in options.kinds:
        out += all_nodes(model, kinds=("resid",), positions=options.resid_positions)
    return sorted(set(out), key=sort_key)


def _check_context(data, model, tok, options: Options) -> None:
    """Every prompt (and clean/corrupt prompt) must fit the model's context: checked before any step runs."""
    spec = adapt(model, tok).spec
    for field in ("prompts", "clean", "corrupt"):
        texts = list(getattr(data, field, None) or ())
        try:
            check_token_ids([tok(text)["input_ids"] for text in texts], spec, argument=field)
        except InputError as err:
            raise UsageError(f"--dataset {options.dataset}: {err}, or leave it out of the dataset") from None


def _check_lengths(data, tok, options: Options) -> None:
    """Every prompt must have the positions the nodes ask for."""
    used = [p for p, kinds in ((options.positions, ("mlp", "head")), (options.resid_positions, ("resid",)))
            if any(k in options.kinds for k in kinds) for p in p]
    need = max([-p for p in used if p < 0] + [p + 1 for p in used if p >= 0] + [1])
    short = [i for i, p in enumerate(data.prompts) if len(tok.encode(p, add_special_tokens=False)) < need]
    if short:
        raise UsageError(f"prompt {short[0]} ({data.prompts[short[0]]!r}) has fewer than the {need} tokens that "
                         f"the node positions need")


def _confounder(data, options: Options):
    """The EB-AIE's confounder setting (``"topics"``, ``"kmeans"`` or ``"none"``) and its value for mediate."""
    confounder = options.confounder
    if confounder == "auto":
        confounder = "topics" if data.topics is not None else "kmeans"
    if confounder == "topics" and data.topics is None:
        raise UsageError("--confounder topics: the dataset has no topic labels")
    value = {"topics": list(data.topics) if data.topics is not None else None, "kmeans": "kmeans",
             "none": None}[confounder]
    return confounder, value


def _strata(data, options: Options):
    """The resample AIE's strata: the dataset's topics when it has them and ``stratify`` is on, else None."""
    return list(data.topics) if options.stratify and data.topics is not None else None


def precheck_sizes(data, model, tok, nodes, options: Options) -> None:
    """What the steps need of the prompts, checked before any forward pass; UsageError names the option to change.

    - ``resample`` / ``confirm``: at least 2 prompts, and a donor for some prompt in its own topic;
    - ``mediate``: enough prompts for the EB-AIE's dimensions (``2 (2 d_q + d_n + k) + 10`` with ``k`` the
      confounder's columns) and, with k-means topics, at least ``2 n_topics`` prompts.
    """
    m = len(data)
    if "resample" in options.steps and options.resample_nodes != 0 and _outcome_metric(data, options) is not None:
        if m < 2:
            raise UsageError(f"--n-prompts: the resample AIE needs at least 2 prompts to form pairs; the run has {m}")
        strata = _strata(data, options)
        try:
            codes = None if strata is None else strata_codes(strata, m)
            draw_pairs(m, options.resample_pairs, codes, options.seed)
        except InputError as err:
            raise UsageError(f"the resample AIE's pairs (donors from each prompt's topic) cannot be drawn from the "
                             f"{m} prompts: {err}. Give more prompts (--n-prompts) or --no-stratify") from None
    if "mediate" in options.steps and _mediate_outcome(data, options) is not None:
        try:
            minilm_zip()  # the EB-AIE's query encoder
        except ModelFileNotFound as err:
            raise UsageError(f"the mediate step (EB-AIE) embeds the prompts with a sentence encoder: "
                             f"{' '.join(str(err).split())}; or leave mediate out of --steps") from None
        _, value = _confounder(data, options)
        dims = {} if options.dims is None else {"d_q": options.dims, "d_n": options.dims}
        try:
            check_enough_prompts(list(data.prompts), nodes, adapt(model, tok).spec, "sentence", value,
                                 options.n_topics, AIEOptions(K=options.K, seed=options.seed, **dims))
        except InputError as err:
            more = " (the dataset has no more)" if m < options.n_prompts else ""
            raise UsageError(f"--n-prompts: the EB-AIE (mediate step) cannot run on the {m} prompts of this run"
                             f"{more}: {err} (--dims sets d_q and d_n), or leave mediate out of --steps") from None


def _outcome_metric(data, options: Options):
    """The metric of the patching and resample steps (the user's --answer/--wrong-answer, or the dataset's)."""
    if options.answer is not None:
        return metrics.logit_diff(options.answer, options.wrong_answer)
    return data.metric


def _mediate_outcome(data, options: Options):
    if data.labels is not None and options.answer is None:
        return list(data.labels)
    return _outcome_metric(data, options)


# ----------------------------------------------------------------------------- the steps


def run_steps(options: Options, folder: Path, log: Log) -> dict:
    """Run the steps and write every output file into ``folder``; returns the settings written."""
    precheck_dataset(options.dataset)
    precheck_model(options.model)
    log(f"loading model {options.model}")
    model, tok = load_model(options.model)
    log(f"loading dataset {options.dataset}")
    data = load_dataset(options.dataset, tok, options.n_prompts, options.seed)
    nodes = select_nodes(model, options)
    _check_lengths(data, tok, options)
    _check_context(data, model, tok, options)
    precheck_sizes(data, model, tok, nodes, options)
    metric = _outcome_metric(data, options)  # a per-row metric (capitals, ioi) follows the rows through subset
    own_metric = options.answer is not None
    log(f"{len(data)} prompts, {len(nodes)} nodes; steps: {', '.join(options.steps)}")
    results, notes, methods = {}, [], {}

    def skip(step, why):
        notes.append(f"{step} skipped: {why}")
        log(f"skipping {step}: {why}")

    context = dict(model=model, tok=tok, data=data, nodes=nodes, metric=metric, own_metric=own_metric, log=log,
                   skip=skip, progress=not options.quiet, methods=methods)
    if "patch" in options.steps:
        _patch_step(results, options, **context)
    if "resample" in options.steps and options.resample_nodes != 0:
        _resample_step(results, options, **context)
    if "confirm" in options.steps:
        _confirm_step(results, options, **context)
    if "mediate" in options.steps:
        _mediate_step(results, options, **context)
    if not results:
        raise UsageError("nothing to do: " + ("; ".join(notes) if notes else "no step selected"))
    notes.extend(f"{step}: {how}" for step, how in methods.items())
    return _write(folder, results, notes, options, data, nodes, metric, log, methods)


def _kinds_text(nodes) -> str:
    counts = {}
    for n in nodes:
        counts[n.kind] = counts.get(n.kind, 0) + 1
    names = {"head": "heads", "mlp": "MLPs", "resid": "residual stream"}
    return ", ".join(f"{names.get(k, k)} ({c})" for k, c in counts.items())


def _patch_step(results, options, *, model, tok, data, nodes, metric, own_metric, log, skip, progress, methods):
    if not data.has_pairs:
        skip("classic patching", "the dataset has no clean/corrupt pairs")
        return
    if metric is None:
        skip("classic patching", "the dataset has no metric (give --answer and --wrong-answer)")
        return
    pairs = data.subset(min(options.n_pairs, len(data)), options.seed + 1)
    log(f"classic patching ({options.patch_method}): {len(pairs)} pairs x {len(nodes)} nodes")
    res = patch(model, list(pairs.clean), list(pairs.corrupt), nodes, metric if own_metric else pairs.metric,
                tokenizer=tok, method=options.patch_method, batch_size=options.batch_size, progress=progress)
    results["patch"] = res
    by = {}
    for n, how in zip(res.nodes, res.node_methods):
        by.setdefault(how, []).append(n)
    methods["classic patching"] = (f"{len(pairs)} clean/corrupt pairs, denoising; " +
                                   "; ".join(f"{how} for {_kinds_text(g)}" for how, g in by.items()) +
                                   (" (patch_method auto: attribution patching for heads and MLPs, where it ranked "
                                    "the nodes as exact patching did; the residual stream exactly)"
                                    if options.patch_method == "auto" and len(by) > 1 else ""))


def _resample_step(results, options, *, model, tok, data, nodes, metric, own_metric, log, skip, progress, methods):
    if metric is None:
        skip("resample AIE", "the dataset has no metric (give --answer and --wrong-answer)")
        return
    sample = nodes
    if options.resample_nodes is not None and options.resample_nodes < len(nodes):
        rng = np.random.default_rng(options.seed)
        sample = [nodes[i] for i in sorted(rng.choice(len(nodes), options.resample_nodes, replace=False))]
    strata = _strata(data, options)
    where = "donors from the prompt's own topic" if strata is not None else "donors from every prompt"
    log(f"resample AIE ({options.resample_method}, {where}): {len(sample)} nodes x {options.resample_pairs} pairs")
    res = resample(model, list(data.prompts), sample, metric, method=options.resample_method, strata=strata,
                   n_pairs=options.resample_pairs, seed=options.seed, tokenizer=tok, batch_size=options.batch_size,
                   progress=progress)
    results["resample"] = res
    by = {}
    for n, how in zip(res.nodes, res.node_methods):
        by.setdefault(how, []).append(n)
    methods["resample AIE"] = (f"{len(res.pairs)} prompt pairs, {where}; " +
                               "; ".join(f"{how} for {_kinds_text(g)}" for how, g in by.items()) +
                               f" ({', '.join(f'{k} {v:.0f} s' for k, v in (res.seconds or {}).items())})")


def _confirm_step(results, options, *, model, tok, data, nodes, metric, own_metric, log, skip, progress, methods):
    res = results.get("resample")
    if res is None:
        skip("exact confirmation", "no resample AIE to confirm")
        return
    fast = sum(how != "exact" for how in res.node_methods)
    if fast == 0:
        methods["exact confirmation"] = "not needed: every node of the resample AIE was computed exactly"
        return
    log(f"exact confirmation: the top {min(options.confirm_top, fast)} and up to {options.confirm_random} random "
        f"first-order nodes, exactly, on the resample AIE's pairs")
    check = confirm(model, list(data.prompts), res, metric, top_k=options.confirm_top,
                    n_random=options.confirm_random, seed=options.seed, tokenizer=tok, batch_size=options.batch_size,
                    progress=progress)
    results["confirm"] = check
    log(f"exact confirmation: {check.summary()}")
    methods["exact confirmation"] = f"exact resample on the resample AIE's pairs; {check.summary()}"


def _interventional_scale(results, outcome, metric):
    """The largest |resample AIE| when the EB-AIE's outcome is the resample AIE's metric (else None)."""
    res = results.get("resample")
    if res is None or metric is None or not callable(outcome):  # labels: another outcome, other units
        return None
    v = np.abs(np.asarray(res.value, dtype=float))
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size and v.max() > 0 else None


def _mediate_step(results, options, *, model, tok, data, nodes, metric, own_metric, log, skip, progress, methods):
    outcome = _mediate_outcome(data, options)
    if outcome is None:
        skip("EB-AIE", "the dataset has neither labels nor a metric (give --answer and --wrong-answer)")
        return
    confounder, conf = _confounder(data, options)
    log(f"EB-AIE (observational; confounder: {confounder}) on {len(nodes)} nodes, {len(data)} prompts")
    extra = {} if options.dims is None else {"d_q": options.dims, "d_n": options.dims}
    scale = _interventional_scale(results, outcome, metric)
    if scale is not None:  # the EB-AIE is of the resample AIE's metric: flag nodes that could not see its effects
        extra["reliability"] = ReliabilityRule(max_detectable=scale)
        log(f"EB-AIE: nodes at which no estimator could tell an AIE of {scale:.3g} (the largest |resample AIE|) "
            "from 0 are flagged unreliable")
    results["mediation"] = med = mediate(model, list(data.prompts), nodes, outcome, confounder=conf,
                                         n_topics=options.n_topics, K=options.K, seed=options.seed,
                                         batch_size=options.batch_size, tokenizer=tok, progress=progress,
                                         n_boot=options.n_boot, **extra)
    reliable = getattr(med.adjusted, "reliable", None)
    share = "" if reliable is None else f"; {int(np.sum(reliable))} of {len(reliable)} adjusted values reliable"
    det = getattr(med.adjusted, "detectable", None)
    det = np.asarray([] if det is None else det, dtype=float)
    if np.isfinite(det).any():
        share += f"; smallest AIE any estimator could tell from 0: median {np.nanmedian(det):.3g} over nodes"
        log(f"EB-AIE: {share[2:]}")
    if scale is not None:
        share += f"; flagged where it exceeds the largest |resample AIE|, {scale:.3g}"
    methods["EB-AIE"] = (f"entropy-balancing weights (observational), confounder {confounder}, {len(data)} "
                         f"prompts{share}")


def _write(folder: Path, results: dict, notes: list, options: Options, data, nodes, metric, log: Log,
           methods: dict | None = None) -> dict:
    """Results as .npz and .csv, the prompts, the report and the settings, into ``folder``."""
    settings = {
        "command": options.command, "model": options.model, "dataset": options.dataset, "n_prompts": len(data),
        "n_dropped_pairs": data.n_dropped, "metric": getattr(metric, "name", None),
        "outcome": "labels" if (data.labels is not None and "mediation" in results and
                                options.answer is None) else getattr(metric, "name", None),
        "kinds": list(options.kinds), "positions": list(options.positions),
        "resid_positions": list(options.resid_positions), "n_nodes": len(nodes), "steps": list(options.steps),
        "n_pairs": options.n_pairs, "patch_method": options.patch_method,
        "resample_method": options.resample_method,
        "resample_nodes": "all" if options.resample_nodes is None else options.resample_nodes,
        "resample_pairs": options.resample_pairs, "stratify": options.stratify, "confirm_top": options.confirm_top,
        "confirm_random": options.confirm_random, "confounder": options.confounder, "n_topics": options.n_topics,
        "K": options.K, "dims": options.dims if options.dims is not None else "library default",
        "n_boot": options.n_boot, "batch_size": options.batch_size, "seed": options.seed,
        **{f"method: {step}": how for step, how in (methods or {}).items()},
    }
    log("writing results")
    for name, result in results.items():
        result.save(folder / f"{name}.npz")
        result.to_dataframe().to_csv(folder / f"{name}.csv", index=False)
    data.to_jsonl(folder / "dataset.jsonl")
    settings["seconds"] = round(time.time() - log.t0, 1)
    title = options.title or f"{PROG} {options.command}: {options.model} on {options.dataset}"
    note = (f"{len(data)} prompts from {options.dataset}; {len(nodes)} nodes "
            f"({', '.join(options.kinds)}). {data.description}")
    if notes:
        note += "\n\n" + "\n\n".join(n.rstrip(".") + "." for n in notes)
    log("writing report.html")
    write_report(folder / "report.html", results, title=title, notes=note, settings=settings)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
    return settings


# ----------------------------------------------------------------------------- the output folder


def _commit(tmp: Path, out: Path) -> list:
    """Move every file of ``tmp`` into ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    moved = []
    for f in sorted(tmp.iterdir()):
        os.chmod(f, 0o666 & ~umask)  # temporary files are created private (0600); give them the usual mode
        os.replace(f, out / f.name)
        moved.append(out / f.name)
    return moved


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _remove_stale_partials(out: Path, log: Log) -> None:
    """Remove the temporary folders of earlier runs into ``out`` whose process is gone (killed with SIGKILL).

    Each run's folder is ``.OUT.partial-PID-XXXX``; one whose PID is still running is another run's and is
    left alone, as is one without a PID (an older version's), which is only reported.
    """
    for path in sorted(out.parent.glob(f".{out.name}.partial-*")):
        match = re.fullmatch(rf"\.{re.escape(out.name)}\.partial-(\d+)-\w+", path.name)
        if not path.is_dir():
            continue
        if match is None:
            log(f"note: {path} looks like the temporary folder of an interrupted run; remove it if no run is "
                "writing there")
        elif not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            log(f"removed {path.name}, the temporary folder of an earlier run that was killed")


def run(options: Options, out, log: Log | None = None) -> list:
    """Run ``options``' steps and write their files into the folder ``out``; returns the files written.

    The files are written into a temporary folder next to ``out`` and moved into ``out`` (created if
    missing; files of the same names are replaced) once everything succeeded: on an error nothing in
    ``out`` changes. Ctrl-C (``KeyboardInterrupt``) and SIGTERM remove the temporary folder too: SIGTERM
    is handled like Ctrl-C, then, unless the caller installed its own SIGTERM handler, delivered again so
    that the process ends as ``kill`` asked (exit status 143). Temporary folders that killed runs
    (SIGKILL) left next to ``out`` are removed on the next run.
    """
    log = Log(options.quiet) if log is None else log
    given = str(out)
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {given}: exists and is not a folder")
    tmp = None
    with sigterm_as_interrupt() as handled:
        try:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                _remove_stale_partials(out, log)
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
            except OSError as err:
                raise UsageError(f"--out {given}: cannot write there ({err.strerror or err})") from None
            run_steps(options, tmp, log)
            return _commit(tmp, out)
        except Terminated:
            if not handled:
                raise
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    os.kill(os.getpid(), signal.SIGTERM)  # the default action again: the process ends as SIGTERM asked
    raise Terminated("terminated by SIGTERM")  # pragma: no cover - not reached
