"""The ``confounded-patching`` command: argument parsing, exit codes, and :mod:`~.pipeline` to do the work.

Two sub-commands:

- ``confounded-patching demo --out DIR`` — offline, on the embedded
  SmolLM2-135M-Instruct and the built-in ``professions`` prompts, with
  small settings that finish in a few minutes on a laptop CPU;
- ``confounded-patching run --model M --dataset D --out DIR`` — the same on
  your model (a local Hugging Face directory, a hub name you have access
  to, or ``smollm2``) and prompts (a built-in set name or a ``.jsonl`` file,
  see :func:`confounded_patching.datasets.from_jsonl`).

Both run the steps of :mod:`~.pipeline` (classic patching; the interventional
resample AIE of every node, topic-stratified, heads to first order; its exact
confirmation on the top and random nodes; the EB-AIE adjusted and unadjusted
on every node) and write ``DIR/report.html`` and the results as data files.

Exit codes: 0 done; 2 bad input (unknown model path, malformed JSONL line,
empty dataset, misspelt node kind ...), reported in one line on stderr with
nothing written to ``DIR``; 1 an unexpected error (with a traceback); 130
interrupted. ``main(argv)`` returns the code instead of exiting, for tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import textwrap
from pathlib import Path

from . import __version__
from .errors import ConfoundedPatchingError
from .nodes import KINDS
from .pipeline import PATCH_METHODS, PROG, RESAMPLE_METHODS, STEPS, Log, Options, UsageError, run

__all__ = ["main", "build_parser", "UsageError", "DEMO_DEFAULTS"]

_OPTIONS = ("n_prompts", "n_pairs", "patch_method", "resample_method", "resample_nodes", "resample_pairs",
            "confirm_top", "confirm_random", "n_topics", "K", "n_boot", "dims", "batch_size", "seed", "kinds",
            "positions", "resid_positions", "steps", "confounder")
#: Settings of ``demo`` (and the defaults of ``run``) as the command line writes them: those of
#: :class:`~.pipeline.Options`.
DEMO_DEFAULTS = {name: ",".join(map(str, v)) if isinstance(v, tuple) else ("all" if v is None and
                                                                             name == "resample_nodes" else v)
                 for name, v in ((n, getattr(Options(), n)) for n in _OPTIONS)}


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
                "%(default)" not in text and action.option_strings and action.nargs != 0:  # not for flags
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
                     help="which analyses to run, any of patch, resample, confirm, mediate; a step the dataset "
                          "cannot support (e.g. patch without clean/corrupt pairs) is skipped with a note")
    est.add_argument("--n-prompts", type=int, default=d["n_prompts"], metavar="N",
                     help="prompts drawn from the dataset for resample and EB-AIE (the EB-AIE needs "
                          "2 * (2 dims + dims + topics - 1) + 10 or more: 164 at the default dims and 3 topics, 170 "
                          "with the 6 topics of professions; "
                          "checked before the model runs)")
    est.add_argument("--n-pairs", type=int, default=d["n_pairs"], metavar="N",
                     help="clean/corrupt pairs for classic patching")
    est.add_argument("--patch-method", default=d["patch_method"], choices=PATCH_METHODS,
                     help="classic patching: exact, attribution (gradient approximation), or auto (attribution "
                          "for heads and MLPs, exact for the residual stream)")
    est.add_argument("--resample-method", default=d["resample_method"], choices=RESAMPLE_METHODS,
                     help="resample AIE: exact, attribution (first order), or auto (heads to first order, MLPs "
                          "and residual stream exactly)")
    est.add_argument("--resample-nodes", default=d["resample_nodes"], metavar="N|all",
                     help="nodes given a resample AIE: all, or a random sample of N (0 = none)")
    est.add_argument("--resample-pairs", type=int, default=d["resample_pairs"], metavar="N",
                     help="random prompt pairs (i, j) of the resample AIE, the same for every node")
    est.add_argument("--no-stratify", dest="stratify", action="store_false",
                     help="draw the resample AIE's donors from every prompt, not from the prompt's own topic "
                          "(the default when the dataset has topics)")
    est.add_argument("--confirm-top", type=int, default=d["confirm_top"], metavar="N",
                     help="first-order nodes with the largest |AIE| that the confirm step runs exactly")
    est.add_argument("--confirm-random", type=int, default=d["confirm_random"], metavar="N",
                     help="further first-order nodes, drawn at random, that the confirm step runs exactly")
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
        description=_wrap("The interventional (resample) AIE of every node of a transformer, fast and checked "
                          "against exact, next to classic activation patching and the observational EB-AIE, "
                          "written up as one offline HTML report."),
        epilog=_EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    demo = sub.add_parser(
        "demo", help="run everything offline on the embedded SmolLM2 and the built-in professions prompts",
        description=_wrap("Run the whole pipeline offline on the embedded SmolLM2-135M-Instruct and the built-in "
                          "'professions' prompts (gender bias: logit(' he') - logit(' she'), topics = occupational "
                          "domains): classic patching; the interventional resample AIE of every node, donors from "
                          "the prompt's topic, heads to first order, checked exactly on its top and random nodes; "
                          "the EB-AIE adjusted and unadjusted on every node. Writes DIR/report.html and the "
                          "results as data files. The defaults take about 2 minutes on 2 CPU cores."),
        epilog=f"example:\n  {PROG} demo --out demo_out\n  {PROG} demo --out quick --n-pairs 4 --steps patch,mediate",
    )
    _add_common(demo, demo=True)
    run = sub.add_parser(
        "run", help="run the pipeline on your model and prompts",
        description=_wrap("Run classic patching, the resample AIE (with its exact confirmation) and the EB-AIE on a "
                          "model and a prompt set, and write "
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


def _options(args) -> Options:
    """The checked options of a ``demo`` or ``run`` command line."""
    opts = {
        "kinds": _choices("--kinds", args.kinds, KINDS, "node kind"),
        "positions": _int_list("--positions", args.positions),
        "resid_positions": _int_list("--resid-positions", args.resid_positions),
        "steps": _choices("--steps", args.steps, STEPS, "step"),
    }
    text = str(args.resample_nodes).strip()
    if text == "all":
        opts["resample_nodes"] = None
    else:
        try:
            opts["resample_nodes"] = int(text)
        except ValueError:
            raise UsageError(f"--resample-nodes must be 'all' or an int >= 0; received {text!r}") from None
        if opts["resample_nodes"] < 0:
            raise UsageError(f"--resample-nodes must be 'all' or an int >= 0; received {text!r}")
    for name, minimum in (("n_prompts", 2), ("n_pairs", 1), ("resample_pairs", 1), ("confirm_top", 0),
                          ("confirm_random", 0), ("n_topics", 2), ("K", 1), ("dims", 1), ("n_boot", 0),
                          ("batch_size", 1)):
        if getattr(args, name) is not None and getattr(args, name) < minimum:
            raise UsageError(f"--{name.replace('_', '-') if name != 'K' else 'partners'} must be >= {minimum}; "
                             f"received {getattr(args, name)}")
    if (getattr(args, "answer", None) is None) != (getattr(args, "wrong_answer", None) is None):
        raise UsageError("--answer and --wrong-answer go together; give both or neither")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if hasattr(args, f.name)}
    return Options(**{**given, **opts})


def main(argv=None) -> int:
    """Entry point of the ``confounded-patching`` console script; returns the exit code."""
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
    log = Log(args.quiet)
    try:
        files = run(_options(args), args.out, log)
        out = Path(args.out).expanduser().resolve()
        log(f"done: {out / 'report.html'} and {len(files) - 1} data files in {out}")
        return 0
    except (UsageError, ConfoundedPatchingError) as err:
        message = " ".join(str(err).split())
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
