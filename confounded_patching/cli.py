"""The ``confounded-patching`` command: the whole pipeline from a model and prompts to an HTML report.

Two sub-commands:

- ``confounded-patching demo --out DIR`` — offline, on the embedded
  SmolLM2-135M-Instruct and the built-in ``professions`` prompts, with
  small settings that finish in a few minutes on a laptop CPU;
- ``confounded-patching run --model M --dataset D --out DIR`` — the same on
  your model (a local Hugging Face directory, a hub name you have access
  to, or ``smollm2``) and prompts (a built-in set name or a ``.jsonl`` file,
  see :func:`confounded_patching.datasets.from_jsonl`).

Steps: classic patching on clean/corrupt pairs (``patch``), the brute-force
resample AIE on a random sample of nodes (``resample``), and the EB-AIE,
adjusted and unadjusted, on every node (``mediate``). ``DIR`` receives
``report.html`` (self-contained, offline), each result as ``NAME.npz``
(``Result.load``) and ``NAME.csv`` (its ``to_dataframe()``), the prompts used
(``dataset.jsonl``) and ``settings.json``.

Exit codes: 0 done; 2 bad input (unknown model path, malformed JSONL line,
empty dataset, misspelt node kind ...), reported in one line on stderr with
nothing written to ``DIR``; 1 an unexpected error (with a traceback); 130
interrupted. ``main(argv)`` returns the code instead of exiting, for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

__all__ = ["main", "build_parser", "UsageError", "DEMO_DEFAULTS"]

PROG = "confounded-patching"
STEPS = ("patch", "resample", "mediate")

#: Settings of ``demo`` (and the defaults of ``run``). With SmolLM2 (390 nodes: 30 MLPs and 270 heads at -1,
#: the residual stream at -3, -2, -1) the demo took 6 min on 2 CPU cores shared with other jobs (25 s loading,
#: 90 s classic patching, 30 s resample AIE, 210 s EB-AIE; 250 CPU-seconds in all).
DEMO_DEFAULTS = dict(
    n_prompts=200, n_pairs=8, resample_nodes=30, resample_pairs=32, n_topics=3, K=100, n_boot=100, dims=None,
    batch_size=64, seed=0, kinds="mlp,head,resid", positions="-1", resid_positions="-3,-2,-1",
    steps=",".join(STEPS), confounder="auto",
)


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and values such as ``-1,-2`` accepted after an option."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        # "-1,-2" and "-1,x" are values, not options: no option of this command starts with a digit
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; adds "(default: X)" where there is a meaningful default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is not None and default is not False and default != argparse.SUPPRESS and \
                "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _wrap(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=100)


_EXAMPLES = f"""examples:
  {PROG} demo --out demo_out
  {PROG} run --model ./my-gpt2 --dataset prompts.jsonl --out results --kinds mlp,head
  {PROG} run --model smollm2 --dataset professions --positions -1 --resid-positions -4,-3,-2,-1 --out r2
  {PROG} run --model HuggingFaceTB/SmolLM2-135M --dataset professions --steps patch,mediate --out r3

JSONL format (one object per line; only "prompt" is required):
  {{"prompt": "The nurse said that", "topic": "care", "corrupt": "The woman said that",
   "answer": " he", "wrong_answer": " she"}}
"""


def _add_common(p: argparse.ArgumentParser, demo: bool) -> None:
    d = DEMO_DEFAULTS
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR",
                     help="folder for report.html and the data files (created if missing; files of the same "
                          "names are replaced)")
    out.add_argument("--title", default=None, help="report title")
    out.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    nodes = p.add_argument_group("nodes")
    nodes.add_argument("--kinds", default=d["kinds"], metavar="K1,K2",
                       help="node kinds, any of mlp, head, resid")
    nodes.add_argument("--positions", default=d["positions"], metavar="P1,P2",
                       help="token positions of MLP and head nodes; negative counts from the last token")
    nodes.add_argument("--resid-positions", default=d["resid_positions"], metavar="P1,P2",
                       help="token positions of residual-stream nodes")
    est = p.add_argument_group("analysis")
    est.add_argument("--steps", default=d["steps"], metavar="S1,S2",
                     help="which analyses to run, any of patch, resample, mediate; a step the dataset "
                          "cannot support (e.g. patch without clean/corrupt pairs) is skipped with a note")
    est.add_argument("--n-prompts", type=int, default=d["n_prompts"], metavar="N",
                     help="prompts drawn from the dataset for resample and EB-AIE (EB needs about 170 or more)")
    est.add_argument("--n-pairs", type=int, default=d["n_pairs"], metavar="N",
                     help="clean/corrupt pairs for classic patching (each costs one forward per node)")
    est.add_argument("--resample-nodes", type=int, default=d["resample_nodes"], metavar="N",
                     help="random sample of nodes for the brute-force resample AIE (0 = none)")
    est.add_argument("--resample-pairs", type=int, default=d["resample_pairs"], metavar="N",
                     help="random prompt pairs (i, j) per resampled node")
    est.add_argument("--confounder", default=d["confounder"], choices=("auto", "topics", "kmeans", "none"),
                     help="EB-AIE confounder: the dataset's topic labels, k-means topics of the prompt "
                          "embeddings, or none (auto: topics when the dataset has them, else kmeans)")
    est.add_argument("--n-topics", type=int, default=d["n_topics"], metavar="k", help="k for --confounder kmeans")
    est.add_argument("-K", "--partners", dest="K", type=int, default=d["K"], metavar="K",
                     help="random partner prompts per prompt in the EB-AIE")
    est.add_argument("--dims", type=int, default=d["dims"], metavar="D",
                     help="PCA dimensions of the query embedding and of each node's activation in the EB-AIE "
                          "(default: the library's, 25)")
    est.add_argument("--n-boot", type=int, default=d["n_boot"], metavar="B",
                     help="bootstrap replicates for the EB-AIE intervals")
    est.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="B",
                     help="rows per forward pass")
    est.add_argument("--seed", type=int, default=d["seed"], help="seed of every random draw")
    if not demo:
        est.add_argument("--answer", default=None, metavar="TOKEN",
                         help="with --wrong-answer: outcome metric logit[TOKEN] - logit[WRONG] "
                              "(default: the dataset's own metric)")
        est.add_argument("--wrong-answer", default=None, metavar="TOKEN", help="see --answer")


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (``demo`` and ``run`` sub-commands)."""
    parser = _Parser(
        prog=PROG,
        description=_wrap("Activation patching next to a deconfounded indirect effect (EB-AIE) for every node of "
                          "a transformer, written up as one offline HTML report."),
        epilog=_EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser(
        "demo", help="run everything offline on the embedded SmolLM2 and the built-in professions prompts",
        description=_wrap("Run the whole pipeline offline on the embedded SmolLM2-135M-Instruct and the built-in "
                          "'professions' prompts (gender bias: logit(' he') - logit(' she'), topics = occupational "
                          "domains): classic patching, resample AIE on a sample of nodes, EB-AIE adjusted and "
                          "unadjusted on every node. Writes DIR/report.html and the results as data files. The "
                          "defaults take about 4 to 6 minutes on 2 CPU cores."),
        epilog=f"example:\n  {PROG} demo --out demo_out\n  {PROG} demo --out quick --n-pairs 4 --steps patch,mediate",
    )
    _add_common(demo, demo=True)
    run = sub.add_parser(
        "run", help="run the pipeline on your model and prompts",
        description=_wrap("Run classic patching, resample AIE and EB-AIE on a model and a prompt set, and write "
                          "DIR/report.html plus the results as .npz and .csv files."),
        epilog=_EXAMPLES,
    )
    src = run.add_argument_group("model and data")
    src.add_argument("--model", required=True,
                     help="a local Hugging Face model folder (config.json + weights + tokenizer), a hub name "
                          "you have access to, or 'smollm2' for the embedded SmolLM2-135M-Instruct")
    src.add_argument("--dataset", required=True,
                     help="a built-in set (professions, capitals, ioi, topic_toxicity) or a .jsonl file with "
                          "one {\"prompt\", \"topic\", \"label\", \"clean\", \"corrupt\", \"answer\", "
                          "\"wrong_answer\"} object per line")
    _add_common(run, demo=False)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


# ----------------------------------------------------------------------------- option checks


def _int_list(name: str, text: str) -> tuple:
    try:
        values = tuple(int(t) for t in str(text).replace(" ", "").split(",") if t != "")
    except ValueError:
        raise UsageError(f"{name} must be comma-separated integers such as -1,-2; received {text!r}") from None
    if not values:
        raise UsageError(f"{name} must name at least one position; received {text!r}")
    return values


def _choices(name: str, text: str, allowed, noun: str = "value") -> tuple:
    values = tuple(t for t in str(text).replace(" ", "").split(",") if t)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UsageError(f"{name}: unknown {noun} {bad[0]!r}; expected a comma-separated subset of "
                         f"{', '.join(allowed)}")
    if not values:
        raise UsageError(f"{name} must name at least one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def _check_args(args) -> dict:
    from .nodes import KINDS

    opts = {
        "kinds": _choices("--kinds", args.kinds, KINDS, "node kind"),
        "positions": _int_list("--positions", args.positions),
        "resid_positions": _int_list("--resid-positions", args.resid_positions),
        "steps": _choices("--steps", args.steps, STEPS, "step"),
    }
    for name, minimum in (("n_prompts", 2), ("n_pairs", 1), ("resample_nodes", 0), ("resample_pairs", 1),
                          ("n_topics", 2), ("K", 1), ("dims", 1), ("n_boot", 0), ("batch_size", 1)):
        if getattr(args, name) is not None and getattr(args, name) < minimum:
            raise UsageError(f"--{name.replace('_', '-') if name != 'K' else 'partners'} must be >= {minimum}; "
                             f"received {getattr(args, name)}")
    if (getattr(args, "answer", None) is None) != (getattr(args, "wrong_answer", None) is None):
        raise UsageError("--answer and --wrong-answer go together; give both or neither")
    return opts


# ----------------------------------------------------------------------------- model and data


def _is_hub_name(name: str) -> bool:
    """``name`` or ``org/name`` (what the hub accepts), not a path such as ``./x`` or ``/a/b``."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name)) and ".." not in name


def _precheck_model(name: str) -> None:
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


def _load_model(name: str):
    """(model, tokenizer) from 'smollm2', a local folder or a hub name; UsageError when it cannot."""
    from .errors import ModelFileNotFound

    if name.lower() in ("smollm2", "embedded"):
        from .models import smollm2

        try:
            return smollm2(backend="hf")
        except ModelFileNotFound as err:
            raise UsageError(str(err).replace("\n", " ")) from None
    _precheck_model(name)
    path = Path(name).expanduser()
    local = path.exists()
    source = str(path) if local else name
    import torch
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


def _precheck_dataset(name: str):
    """Fail fast on a bad dataset argument, before the model is loaded."""
    from . import datasets

    if name in datasets.BUILTIN:
        return None
    path = Path(name).expanduser()
    if path.suffix != ".jsonl" and not path.exists():
        raise UsageError(f"--dataset {name}: expected a built-in set ({', '.join(datasets.BUILTIN)}) or a .jsonl "
                         "file")
    if not path.is_file():
        raise UsageError(f"--dataset {name}: no such file")
    return datasets.from_jsonl(path)  # raises InputError "file:line: ..." on a malformed line


def _load_dataset(name: str, tokenizer, n_prompts: int, seed: int):
    from . import datasets

    if name in datasets.BUILTIN:
        data = datasets.BUILTIN[name](n=None, seed=seed, tokenizer=tokenizer)
    else:
        data = datasets.from_jsonl(Path(name).expanduser(), tokenizer=tokenizer)
    if len(data) > n_prompts:
        data = data.subset(n_prompts, seed)
    return data


def _nodes(model, opts) -> list:
    from .nodes import nodes as all_nodes, sort_key

    out = []
    other = [k for k in opts["kinds"] if k != "resid"]
    if other:
        out += all_nodes(model, kinds=other, positions=opts["positions"])
    if "resid" in opts["kinds"]:
        out += all_nodes(model, kinds=("resid",), positions=opts["resid_positions"])
    return sorted(set(out), key=sort_key)


# ----------------------------------------------------------------------------- the pipeline


class _Log:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.time() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _pipeline(args, opts, tmp: Path, log: _Log) -> dict:
    """Run the steps and write every output file into ``tmp``; returns the settings written."""
    import numpy as np

    import confounded_patching as cp

    from . import metrics
    from .report import write_report

    dataset_name = "professions" if args.command == "demo" else args.dataset
    model_name = "smollm2" if args.command == "demo" else args.model
    _precheck_dataset(dataset_name)
    _precheck_model(model_name)
    log(f"loading model {model_name}")
    model, tok = _load_model(model_name)
    log(f"loading dataset {dataset_name}")
    data = _load_dataset(dataset_name, tok, args.n_prompts, args.seed)
    nodes = _nodes(model, opts)
    used = [p for p, kinds in ((opts["positions"], ("mlp", "head")), (opts["resid_positions"], ("resid",)))
            if any(k in opts["kinds"] for k in kinds) for p in p]
    need = max([-p for p in used if p < 0] + [p + 1 for p in used if p >= 0] + [1])
    short = [i for i, p in enumerate(data.prompts) if len(tok.encode(p, add_special_tokens=False)) < need]
    if short:
        raise UsageError(f"prompt {short[0]} ({data.prompts[short[0]]!r}) has fewer than the {need} tokens that "
                         f"the node positions need")
    metric = data.metric  # a per-row metric (capitals, ioi) follows the rows through subset/take
    own_metric = getattr(args, "answer", None) is not None
    if own_metric:
        metric = metrics.logit_diff(args.answer, args.wrong_answer)
    progress = not args.quiet
    log(f"{len(data)} prompts, {len(nodes)} nodes; steps: {', '.join(opts['steps'])}")
    results, notes = {}, []

    def skip(step, why):
        notes.append(f"{step} skipped: {why}")
        log(f"skipping {step}: {why}")

    steps = opts["steps"]
    if "patch" in steps:
        if not data.has_pairs:
            skip("classic patching", "the dataset has no clean/corrupt pairs")
        elif metric is None:
            skip("classic patching", "the dataset has no metric (give --answer and --wrong-answer)")
        else:
            pairs = data.subset(min(args.n_pairs, len(data)), args.seed + 1)
            log(f"classic patching: {len(pairs)} pairs x {len(nodes)} nodes")
            results["patch"] = cp.patch(model, list(pairs.clean), list(pairs.corrupt), nodes,
                                        metric if own_metric else pairs.metric, tokenizer=tok,
                                        batch_size=args.batch_size, progress=progress)
    if "resample" in steps and args.resample_nodes > 0:
        if metric is None:
            skip("resample AIE", "the dataset has no metric (give --answer and --wrong-answer)")
        else:
            rng = np.random.default_rng(args.seed)
            pick = sorted(rng.choice(len(nodes), min(args.resample_nodes, len(nodes)), replace=False))
            sample = [nodes[i] for i in pick]
            log(f"resample AIE: {len(sample)} sampled nodes x {args.resample_pairs} prompt pairs")
            results["resample"] = cp.resample(model, list(data.prompts), sample, metric, n_pairs=args.resample_pairs,
                                              seed=args.seed, tokenizer=tok, batch_size=args.batch_size,
                                              progress=progress)
    if "mediate" in steps:
        outcome = list(data.labels) if data.labels is not None and not own_metric else metric
        if outcome is None:
            skip("EB-AIE", "the dataset has neither labels nor a metric (give --answer and --wrong-answer)")
        else:
            confounder = args.confounder
            if confounder == "auto":
                confounder = "topics" if data.topics is not None else "kmeans"
            if confounder == "topics" and data.topics is None:
                raise UsageError("--confounder topics: the dataset has no topic labels")
            conf = {"topics": list(data.topics) if data.topics is not None else None, "kmeans": "kmeans",
                    "none": None}[confounder]
            log(f"EB-AIE (confounder: {confounder}) on {len(nodes)} nodes, {len(data)} prompts")
            dims = {} if args.dims is None else {"d_q": args.dims, "d_n": args.dims}
            results["mediation"] = cp.mediate(model, list(data.prompts), nodes, outcome, confounder=conf,
                                              n_topics=args.n_topics, K=args.K, seed=args.seed,
                                              batch_size=args.batch_size, tokenizer=tok, progress=progress,
                                              n_boot=args.n_boot, **dims)
    if not results:
        raise UsageError("nothing to do: " + ("; ".join(notes) if notes else "no step selected"))

    settings = {
        "command": args.command, "model": model_name, "dataset": dataset_name, "n_prompts": len(data),
        "n_dropped_pairs": data.n_dropped, "metric": getattr(metric, "name", None),
        "outcome": "labels" if (data.labels is not None and "mediation" in results and
                                getattr(args, "answer", None) is None) else getattr(metric, "name", None),
        "kinds": list(opts["kinds"]), "positions": list(opts["positions"]),
        "resid_positions": list(opts["resid_positions"]), "n_nodes": len(nodes), "steps": list(opts["steps"]),
        "n_pairs": args.n_pairs, "resample_nodes": args.resample_nodes, "resample_pairs": args.resample_pairs,
        "confounder": args.confounder, "n_topics": args.n_topics, "K": args.K,
        "dims": args.dims if args.dims is not None else "library default",
        "n_boot": args.n_boot, "batch_size": args.batch_size, "seed": args.seed,
    }
    log("writing results")
    for name, result in results.items():
        result.save(tmp / f"{name}.npz")
        result.to_dataframe().to_csv(tmp / f"{name}.csv", index=False)
    data.to_jsonl(tmp / "dataset.jsonl")
    settings["seconds"] = round(time.time() - log.t0, 1)
    title = args.title or f"{PROG} {args.command}: {model_name} on {dataset_name}"
    note = (f"{len(data)} prompts from {dataset_name}; {len(nodes)} nodes "
            f"({', '.join(opts['kinds'])}). {data.description}")
    if notes:
        note += "\n\n" + " ".join(n + "." for n in notes)
    log("writing report.html")
    write_report(tmp / "report.html", results, title=title, notes=note, settings=settings)
    (tmp / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
    return settings


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


def main(argv=None) -> int:
    """Entry point of the ``confounded-patching`` console script; returns the exit code."""
    from .errors import ConfoundedPatchingError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    except SystemExit as err:  # --help / --version
        return int(err.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    log = _Log(args.quiet)
    tmp = None
    try:
        opts = _check_args(args)
        out = Path(args.out).expanduser().resolve()
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {args.out}: exists and is not a folder")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        except OSError as err:
            raise UsageError(f"--out {args.out}: cannot write there ({err.strerror or err})") from None
        _pipeline(args, opts, tmp, log)
        files = _commit(tmp, out)
        log(f"done: {out / 'report.html'} and {len(files) - 1} data files in {out}")
        return 0
    except (UsageError, ConfoundedPatchingError) as err:
        message = " ".join(str(err).split())
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
