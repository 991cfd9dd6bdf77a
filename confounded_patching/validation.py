"""Checks of arguments at the public boundary: the library's only validators.

Every public function checks its arguments with these and raises
:class:`~.errors.InputError` with one message form: the argument's name,
what was expected, and what was received (:func:`~.errors.describe`)::

    >>> check_int("batch_size", 0, minimum=1, expected="a positive int")
    InputError: batch_size must be a positive int; received 0
    >>> check_choice("direction", "denoising", ("denoise", "noise"))
    InputError: direction must be one of ('denoise', 'noise'); received 'denoising'

torch is imported by the functions that need it, so that ``import
confounded_patching`` (which loads :mod:`~.nodes`, which uses
:func:`check_int`) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError, describe

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["is_int", "check_int", "check_bool", "check_choice", "check_auto_bool", "as_float_tensor", "as_matrix",
           "beyond_prompt", "fits", "check_positions", "check_token_ids", "check_batch_fits", "unknown_token_warning",
           "check_finite_outcome", "resolve_device"]


def is_int(value, *, numpy: bool = True) -> bool:
    """Whether ``value`` is an integer (a numpy integer too, when ``numpy``); ``True``/``False`` are not."""
    kinds = (int, np.integer) if numpy else int
    return isinstance(value, kinds) and not isinstance(value, bool)


def check_int(name: str, value, *, minimum: int | None = None, allow_none: bool = False, numpy: bool = True,
              expected: str | None = None) -> None:
    """Raise :class:`InputError` unless ``value`` is an int (never a bool) of at least ``minimum``.

    With ``expected`` (e.g. ``"a positive int"``, ``"an int >= 2"``) both failures read
    ``"{name} must be {expected}; received ..."``; without it the type and the range get their own
    messages (``"layer must be an int; received ..."``, ``"layer must be >= 0; received -1"``).
    ``numpy=False`` refuses numpy integers (node fields, which must stay JSON-able).
    """
    if value is None and allow_none:
        return
    if not is_int(value, numpy=numpy):
        what = expected or f"an int{' or None' if allow_none else ''}"
        raise InputError(f"{name} must be {what}; received {describe(value)}")
    if minimum is not None and value < minimum:
        if expected:
            raise InputError(f"{name} must be {expected}; received {describe(value)}")
        raise InputError(f"{name} must be >= {minimum}; received {value}")


def check_bool(name: str, value) -> bool:
    """Return ``value`` as a bool if it is ``True`` or ``False`` (a numpy bool too); raise otherwise.

    Ints are refused: ``progress=0`` or a misplaced positional argument would otherwise pass as a flag.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputError(f"{name} must be True or False; received {describe(value)}")


def _show(choices) -> str:
    """A tuple as its repr; any other collection in braces, in its own order."""
    if isinstance(choices, tuple):
        return repr(choices)
    return "{" + ", ".join(repr(c) for c in choices) + "}"


def check_choice(name: str, value, choices):
    """Return ``value`` if it is one of ``choices``, else raise :class:`InputError` listing them."""
    if value not in choices:
        raise InputError(f"{name} must be one of {_show(choices)}; received {value!r}")
    return value


def check_auto_bool(name: str, value):
    """Return ``value`` if it is ``"auto"``, ``True`` or ``False`` (a numpy bool too); ``1`` and ``0`` are refused."""
    if isinstance(value, np.bool_):
        return bool(value)
    if not (isinstance(value, bool) or (isinstance(value, str) and value == "auto")):
        raise InputError(f"{name} must be 'auto', True or False; received {describe(value)}")
    return value


def _numeric_array(name: str, x) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{name} must be a numeric array; received {describe(arr)}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} must be real; received {describe(arr)} (complex values would lose their "
                         "imaginary part)")
    return arr


def as_float_tensor(name: str, x, *, ndims: tuple[int, ...], dtype=None, device=None) -> torch.Tensor:
    """A float tensor of ``x`` (numpy or torch) with ``ndim`` in ``ndims``, finite; a view where possible.

    ``dtype``: the dtype wanted; ``None`` keeps a torch input's floating dtype (numpy and integer input
    become float64). ``device``: where to put it (None: where it is). The result may share memory with
    ``x``: never write to it.
    """
    import torch

    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype.is_complex or not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64,
                                                                                 torch.bool)):
            raise InputError(f"{name} must be a numeric tensor; received {describe(x)}")
    else:
        t = torch.from_numpy(np.ascontiguousarray(_numeric_array(name, x)))
    if t.ndim not in ndims:
        want = " or ".join(f"{d}-d" for d in ndims)
        raise InputError(f"{name} must be {want}; received {describe(x)}")
    if dtype is None:
        dtype = t.dtype if (isinstance(x, torch.Tensor) and t.dtype.is_floating_point) else torch.float64
    t = t.to(device=device, dtype=dtype)
    if not torch.isfinite(t).all():
        raise InputError(f"{name} must be finite; received {describe(x)} with NaN or inf entries")
    return t


def as_matrix(name: str, x, m: int | None = None) -> torch.Tensor:
    """``x`` as a finite float64 CPU matrix ``[prompts, dims]`` (a vector becomes one column).

    ``m``: the number of rows it must have (one per prompt, the length of the outcome).
    """
    import torch

    if isinstance(x, torch.Tensor):
        t = x.detach().to("cpu", torch.float64)
    else:
        t = torch.from_numpy(np.array(_numeric_array(name, x), dtype=np.float64))
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise InputError(f"{name} must be a 2-d array [prompts, dims]; received {describe(x)}")
    if m is not None and t.shape[0] != m:
        raise InputError(f"{name} must have one row per prompt ({m}, the length of outcome); received {describe(x)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} must be finite; received {describe(x)} with NaN or inf entries")
    return t


def beyond_prompt(pos: int, prompt: int, length: int) -> InputError:
    """The error for a node position ``pos`` that prompt number ``prompt`` (``length`` tokens) does not have."""
    return InputError(f"position {pos} is beyond prompt {prompt}'s length: it has {length} tokens, "
                      f"so positions must lie in [-{length}, {length - 1}]")


def fits(pos: int, length: int) -> bool:
    """Whether a prompt of ``length`` tokens has position ``pos`` (negative: counted from its end)."""
    return length >= -pos if pos < 0 else length > pos


def check_positions(id_lists, nodes, *, argument: str = "prompts") -> None:
    """Raise before any forward pass if a node's position lies beyond a prompt of ``id_lists``.

    The message names the argument the prompts came from (``"clean: position -3 is beyond prompt 0's
    length ..."``). Nodes with ``pos=None`` (every position) fit any prompt.
    """
    lengths = [len(ids) for ids in id_lists]
    for pos in sorted({n.pos for n in nodes if n.pos is not None}):
        for i, length in enumerate(lengths):
            if not fits(pos, length):
                raise InputError(f"{argument}: {beyond_prompt(pos, i, length)}") from None


def _context_advice(key: str | None) -> str:
    if key is None:
        return "shorten the prompt"
    if key.endswith("max_position_embeddings"):
        return (f"shorten the prompt ({key}; models with rotary positions run past it without an error, but on "
                "positions they were never trained on)")
    return f"shorten the prompt ({key})"


def check_token_ids(id_lists, spec, *, argument: str = "prompts") -> None:
    """Raise before any forward pass if a prompt holds an id outside the model's vocabulary or is too long.

    ``spec`` is the model's :class:`~.models.architectures.ModelSpec`: its ``vocab_size`` (rows of the input
    embedding) and ``context`` (positions the model has, from ``config.n_positions``,
    ``config.max_position_embeddings`` or TransformerLens' ``cfg.n_ctx``); either may be None (not checked).
    Messages name the prompt::

        prompts[3] has 100 tokens, but the model's context holds 64 positions; shorten the prompt (config.n_positions)
        prompts[0] holds token id 5000 at position 0, outside the model's vocabulary of 100 ids (valid: 0..99)
    """
    vocab = getattr(spec, "vocab_size", None)
    context = getattr(spec, "context", None)
    key = getattr(spec, "context_key", None)
    for i, ids in enumerate(id_lists):
        if context is not None and len(ids) > context:
            raise InputError(f"{argument}[{i}] has {len(ids)} tokens, but the model's context holds {context} "
                             f"positions; {_context_advice(key)}")
        if vocab is not None and ids and (min(ids) < 0 or max(ids) >= vocab):
            pos, bad = next((p, t) for p, t in enumerate(ids) if not 0 <= t < vocab)
            raise InputError(f"{argument}[{i}] holds token id {bad} at position {pos}, outside the model's "
                             f"vocabulary of {vocab} ids (valid: 0..{vocab - 1})")


def check_batch_fits(batch, spec, *, argument: str = "prompts") -> None:
    """:func:`check_token_ids` for a padded batch about to run (the last check before a forward pass).

    Entry points check their prompts before any forward pass with :func:`check_token_ids`, naming the
    prompt; this guards the forward passes of every other caller, naming the batch row.
    """
    vocab = getattr(spec, "vocab_size", None)
    context = getattr(spec, "context", None)
    ids = batch.input_ids
    if ids.numel() == 0:
        return
    if context is not None and ids.shape[1] > context:
        lengths = batch.lengths
        longest = int(lengths.max())
        if longest > context:
            row = int(lengths.argmax())
            raise InputError(f"{argument}: a batch holds a prompt of {longest} tokens (row {row}), but the model's "
                             f"context holds {context} positions; {_context_advice(getattr(spec, 'context_key', None))}")
    if vocab is not None:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            row = int((ids == bad).any(-1).nonzero()[0])
            raise InputError(f"{argument}: a batch holds token id {bad} (row {row}), outside the model's vocabulary "
                             f"of {vocab} ids (valid: 0..{vocab - 1})")


def unknown_token_warning(prompts, id_lists, tokenizer, *, argument: str = "prompts") -> str | None:
    """The warning for string prompts that hold words the tokenizer encodes as its unknown token, or None.

    A word-level or SentencePiece tokenizer maps a word it does not know to its ``unk_token``: the model then
    reads that token instead of the word, silently. Prompts given as ids, and prompts that spell the unknown
    token themselves, are not reported.
    """
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk = getattr(tokenizer, "unk_token", None)
    if unk_id is None or isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__iter__"):
        return None
    bad = [i for i, (p, ids) in enumerate(zip(prompts, id_lists))
           if isinstance(p, str) and unk_id in ids and (not unk or str(unk) not in p)]
    if not bad:
        return None
    first = prompts[bad[0]]
    shown = first if len(first) <= 60 else first[:57] + "..."
    return (f"{argument}: {len(bad)} prompt(s) hold words the tokenizer does not know, encoded as its unknown "
            f"token {unk!r} (id {unk_id}), e.g. {argument}[{bad[0]}] = {shown!r}; the model reads {unk!r} "
            f"there instead of the word (prompts {bad[:5]}{' ...' if len(bad) > 5 else ''})")


def check_finite_outcome(values, name: str, *, rows=None, argument: str = "metric") -> None:
    """Raise if a metric's values ``[batch]`` hold NaN or inf, naming the metric and the prompts (``rows``)."""
    import torch

    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().flatten().tolist()
    kinds = " and ".join(sorted({"NaN" if bool(torch.isnan(values[b])) else "inf" for b in bad[:50]}))
    where = sorted({int(rows[b]) for b in bad}) if rows is not None else bad
    shown = f"{where[:5]}{' ...' if len(where) > 5 else ''}"
    place = f"prompt(s) {shown} ({len(bad)} of {len(values)} rows)" if rows is not None else \
        f"{len(bad)} of {len(values)} rows {shown}"
    raise InputError(f"{argument} {name!r} is not finite ({kinds}) on {place}: a metric must return a finite "
                     "number per prompt")


_DEVICES = "None (CPU), 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device"


def resolve_device(device, *, argument: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` (None: the CPU); raises :class:`InputError` if torch cannot use it.

    ``"cuda"``, ``"cuda:1"`` or a ``torch.device`` are accepted when torch sees that GPU; asking for one
    it does not see is an error, not a silent CPU fallback. torch's global settings (``allow_tf32``,
    matmul precision) are never changed.

    Example::

        >>> resolve_device(None), resolve_device("cpu")
        (device(type='cpu'), device(type='cpu'))
        >>> resolve_device("cuda")              # on a machine without a GPU
        InputError: device='cuda' asks for a CUDA GPU, but torch.cuda.is_available() is False ...
    """
    import torch

    if device is None:
        return torch.device("cpu")
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise InputError(f"{argument} must be {_DEVICES}; received {describe(device)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"{argument} must be {_DEVICES}; received {device!r}") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(f"{argument}={str(device)!r} asks for a CUDA GPU, but torch.cuda.is_available() is False "
                             f"(torch {torch.__version__}, {build}; no GPU visible); use {argument}='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{argument}={str(device)!r}: torch sees {count} CUDA device(s), indices 0..{count - 1}")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{argument}={str(device)!r} asks for Apple's MPS, but torch.backends.mps.is_available() "
                             f"is False; use {argument}='cpu'")
        return dev
    raise InputError(f"{argument} must be {_DEVICES}; received {str(device)!r}")
