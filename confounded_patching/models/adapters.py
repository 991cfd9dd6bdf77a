"""Backends behind one interface: nnsight models, TransformerLens models, plain HF models.

Each adapter knows the model's sizes (:class:`ModelSpec`), how to tokenize,
and how to run one forward pass that performs a :class:`~.sites.Plan` (reads
and patches) and returns the logits at each row's last real token. The
indexing itself is shared (:func:`~.sites.apply`); adapters only say where a
site's tensor is:

- :class:`NNsightAdapter` — ``nnsight.TransformersModel`` / ``LanguageModel``
  / ``NNsight`` around an HF causal LM; the plan runs inside ``model.trace``,
  so ``remote=`` and the rest of nnsight's machinery apply unchanged.
- :class:`HFAdapter` — a plain HF causal LM plus tokenizer; torch hooks.
- :class:`TransformerLensAdapter` — TransformerLens ``TransformerBridge`` or
  a legacy ``HookedTransformer``, recognised by duck typing
  (``run_with_hooks``, ``hook_dict``); hooks ``hook_resid_pre``,
  ``attn.hook_z`` and ``hook_mlp_out``.

Use :func:`adapt` to get the adapter of any accepted model.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

from ..errors import InputError, describe
from ..validation import check_batch_fits
from .architectures import ModelSpec, spec_from_hf
from .sites import Plan, apply
from .tokens import TokenBatch, encode

__all__ = ["Adapter", "NNsightAdapter", "HFAdapter", "TransformerLensAdapter", "adapt"]


class Adapter:
    """Common interface. Subclasses set ``model``, ``tokenizer``, ``spec`` and implement ``_forward``."""

    name = "adapter"
    supports_remote = False
    supports_start = False  # can begin a forward pass at a later block (see ``run(start=...)``)
    model: Any
    tokenizer: Any
    spec: ModelSpec

    @property
    def device(self) -> torch.device:
        try:
            return next(self.module.parameters()).device
        except StopIteration:  # pragma: no cover
            return torch.device("cpu")

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def encode(self, prompts, padding_side: str = "left", *, argument: str = "prompts") -> TokenBatch:
        try:
            return encode(prompts, self.tokenizer, padding_side)
        except InputError as err:
            raise InputError(str(err).replace("prompts", argument, 1)) from None

    def run(self, batch: TokenBatch, plan: Plan, *, logits: bool = True, start=None,
            **kwargs) -> tuple[dict, torch.Tensor | None]:
        """One forward pass performing ``plan``; returns (reads, logits).

        ``logits``: True for the logits at each row's last real token
        ``[batch, vocab]``, ``"full"`` for every position ``[batch, seq, vocab]``,
        False for none. ``start=(layer, hidden)`` skips blocks ``0..layer-1``
        and feeds ``hidden`` ``[batch, seq, d_model]`` to block ``layer`` as its
        input (only where :meth:`can_start`; the plan may touch no earlier site).
        """
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if "remote" in kwargs and not self.supports_remote:
            raise InputError(
                f"remote execution needs an nnsight model named by a repo id; this model is served by "
                f"{self.name}, which runs locally only (received remote={kwargs['remote']!r})"
            )
        check_batch_fits(batch, self.spec)  # guards every caller's forward passes, not only the entry points
        batch = batch.to(self.device)
        if start is not None and start[0] > 0:
            if not self.can_start():
                raise InputError(f"this {self.name} model cannot start a forward pass at a later block")
            return self._forward(batch, plan.to(self.device), logits, start=(start[0], start[1].to(self.device)),
                                 **kwargs)
        return self._forward(batch, plan.to(self.device), logits, **kwargs)

    def _forward(self, batch, plan, logits, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def can_start(self) -> bool:
        """Whether ``run(start=...)`` works: the backend can skip blocks and each block returns a plain tensor."""
        if not self.supports_start:
            return False
        if not hasattr(self, "_blocks_return_tensor"):
            self._blocks_return_tensor = _blocks_return_tensor(self.module, self.spec.layout)
        return self._blocks_return_tensor

    def grad_run(self, batch: TokenBatch, sites, metric_fn, *, full: bool = False
                 ) -> tuple[dict, dict, torch.Tensor]:
        """Forward with gradients: site tensors, d(metric_fn(logits).sum())/d(site), the logits.

        ``sites`` is a list of ``(kind, layer)``. ``metric_fn`` receives the
        logits at each row's last real token ``[batch, vocab]``, or with
        ``full`` every position's ``[batch, seq, vocab]``; those logits are
        returned (detached). Gradients are taken with ``torch.autograd.grad``
        so no parameter's ``.grad`` is touched.
        """
        check_batch_fits(batch, self.spec)
        batch = batch.to(self.device)
        tensors: dict = {}
        with torch.enable_grad():
            logits = self._grad_forward(batch, sorted(set(sites), key=lambda s: (s[1], s[0] != "resid")), tensors,
                                        full=full)
            last = _gather_last(logits, batch, full)
            value = metric_fn(last)
            keys = list(tensors)
            grads = torch.autograd.grad(value.sum(), [tensors[k] for k in keys], allow_unused=True)
        acts = {k: tensors[k].detach() for k in keys}
        grads = {k: (torch.zeros_like(acts[k]) if g is None else g.detach()) for k, g in zip(keys, grads)}
        for k in keys:  # head sites as [batch, seq, n_heads, head_dim] on every backend
            if k[0] == "head" and acts[k].ndim == 3:
                acts[k] = acts[k].unflatten(-1, (self.spec.n_heads, -1))
                grads[k] = grads[k].unflatten(-1, (self.spec.n_heads, -1))
        return acts, grads, last.detach()

    def _grad_forward(self, batch, sites, tensors, *, full=False):  # pragma: no cover - abstract
        raise NotImplementedError

    def check_node(self, node, *, argument: str = "nodes") -> None:
        """Raise if ``node`` does not exist in this model."""
        spec = self.spec
        if node.layer >= spec.n_layers:
            raise InputError(f"{argument}: {node!r} has layer {node.layer}, but the model has "
                             f"{spec.n_layers} layers (valid: 0..{spec.n_layers - 1})")
        if node.kind == "head" and node.head >= spec.n_heads:
            raise InputError(f"{argument}: {node!r} has head {node.head}, but the model has "
                             f"{spec.n_heads} heads per layer (valid: 0..{spec.n_heads - 1})")


def _blocks_return_tensor(hf, layout) -> bool:
    """Probe one 2-token forward: does block 0 return a plain tensor (the next block's input)?"""
    seen = []
    handle = hf.get_submodule(f"{layout.blocks}.0").register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        device = next(hf.parameters()).device
        ids = torch.ones(1, 2, dtype=torch.long, device=device)
        with torch.no_grad():
            hf(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception:  # noqa: BLE001 - any failure means: do not skip blocks
        return False
    finally:
        handle.remove()
    return bool(seen) and isinstance(seen[0], torch.Tensor)


@contextlib.contextmanager
def _skipped_blocks(hf, layout, layer: int, hidden: torch.Tensor):
    """Blocks ``0..layer-1`` return ``hidden`` without computing (instance ``forward`` swapped, then restored)."""
    blocks = [hf.get_submodule(f"{layout.blocks}.{j}") for j in range(layer)]
    missing = object()
    saved = [b.__dict__.get("forward", missing) for b in blocks]
    skip = lambda *args, **kwargs: hidden
    try:
        for b in blocks:
            b.forward = skip
        yield
    finally:
        for b, f in zip(blocks, saved):
            if f is missing:
                b.__dict__.pop("forward", None)
            else:
                b.forward = f


def _gather_last(logits: torch.Tensor, batch: TokenBatch, full: bool = False) -> torch.Tensor:
    if full:
        return logits
    if logits.shape[1] == 1:
        return logits[:, 0]
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, batch.last]


class _HFInputs:
    """Building the keyword inputs of an HF causal LM for a batch."""

    def _hf_inputs(self, hf, batch: TokenBatch, logits: bool) -> dict:
        params = inspect.signature(hf.forward).parameters
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "position_ids" in params:
            inputs["position_ids"] = batch.position_ids
        if "use_cache" in params:
            inputs["use_cache"] = False
        if "logits_to_keep" in params and batch.padding_side == "left" and logits != "full":
            inputs["logits_to_keep"] = 1
        return inputs


class _HFGrad:
    """Gradient runs through torch hooks on the underlying HF module (nnsight leaves these working)."""

    def _grad_forward(self, batch, sites, tensors, *, full=False):
        hf, layout = self.module, self.spec.layout
        handles = []

        def keep(site, leaf=False):
            def pre(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                if leaf:  # start the graph here, whether or not parameters require grad
                    x = x.detach().requires_grad_(True)
                    args = (x, *args[1:]) if args else args
                    if not args:
                        kwargs = {**kwargs, "hidden_states": x}
                tensors[site] = x
                return args, kwargs

            return pre

        def keep_out(site):
            def post(module, args, output):
                tensors[site] = output[0] if isinstance(output, tuple) else output

            return post

        try:
            block0 = hf.get_submodule(f"{layout.blocks}.0")
            handles.append(block0.register_forward_pre_hook(keep(("resid", 0), leaf=True), with_kwargs=True))
            for kind, layer in sites:
                block = hf.get_submodule(f"{layout.blocks}.{layer}")
                if kind == "resid" and layer > 0:
                    handles.append(block.register_forward_pre_hook(keep((kind, layer)), with_kwargs=True))
                elif kind == "head":
                    handles.append(block.get_submodule(layout.out_proj).register_forward_pre_hook(
                        keep((kind, layer)), with_kwargs=True))
                elif kind == "mlp":
                    handles.append(block.get_submodule(layout.mlp).register_forward_hook(keep_out((kind, layer))))
            inputs = self._hf_inputs(hf, batch, "full" if full else True)
            logits = hf(**inputs).logits
        finally:
            for h in handles:
                h.remove()
        if ("resid", 0) not in sites:
            tensors.pop(("resid", 0), None)
        return logits


class NNsightAdapter(_HFGrad, Adapter, _HFInputs):
    """An nnsight model (``TransformersModel``, ``LanguageModel`` or ``NNsight``) around an HF causal LM."""

    name = "nnsight"
    supports_remote = True
    supports_start = True

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        self.spec = spec_from_hf(model._module)

    @property
    def module(self):
        return self.model._module

    def envoy(self, kind: str, layer: int):
        layout = self.spec.layout
        block = self.model.get(f"{layout.blocks}.{layer}")
        if kind == "resid":
            return block.input
        if kind == "head":
            return block.get(layout.out_proj).input
        return block.get(layout.mlp).output

    def _forward(self, batch, plan, logits, **kwargs):
        import nnsight

        inputs = self._hf_inputs(self.module, batch, logits)
        n_heads = self.spec.n_heads
        if kwargs.get("remote"):
            self._check_remote(kwargs["remote"])
            _register_for_remote()
        start = kwargs.pop("start", None)
        want = [None]
        with torch.no_grad(), self.model.trace(**inputs, **kwargs):
            if start is not None:  # nnsight's own module skipping, in forward order
                for j in range(start[0]):
                    self.model.get(f"{self.spec.layout.blocks}.{j}").skip(start[1])
            out = nnsight.save({})
            for site in plan.sites():
                apply(plan, site, self.envoy(*site), n_heads, out)
            if logits:
                want = nnsight.save([_gather_last(self.model.output.logits, batch, logits == "full")])
        return dict(out), want[0]

    def _check_remote(self, remote) -> None:
        if remote == "local":  # nnsight's serialisation dry run, in-process
            return
        try:
            self.model.to_model_key()
        except Exception as err:  # noqa: BLE001 - nnsight raises several types here
            raise InputError(
                "remote execution needs a model that nnsight names by repo id, e.g. "
                "nnsight.TransformersModel('meta-llama/Llama-3.1-70B'); this model wraps a module loaded "
                f"locally ({type(err).__name__}: {err}). Use remote='local' for a serialisation dry run."
            ) from None

    def capture_in_trace(self, plan: Plan) -> dict:
        """Perform ``plan`` inside the caller's open trace; returns the saved reads dict."""
        import nnsight

        out = nnsight.save({})
        for site in plan.sites():
            apply(plan, site, self.envoy(*site), self.spec.n_heads, out)
        return out


def _register_for_remote() -> None:
    """Ship this package's code by value with remote requests (the server does not have it installed).

    Done only when a caller asks for remote execution: it adds the package to
    cloudpickle's by-value registry.
    """
    import nnsight

    nnsight.register(__name__.split(".")[0])


class HFAdapter(_HFGrad, Adapter, _HFInputs):
    """A plain Hugging Face causal LM and its tokenizer, driven by torch hooks."""

    name = "transformers"
    supports_start = True

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec_from_hf(model)

    def _forward(self, batch, plan, logits, **kwargs):
        start = kwargs.pop("start", None)
        if kwargs:
            raise InputError(f"unexpected keyword arguments for a plain HF model: {sorted(kwargs)}")
        layout, n_heads, out = self.spec.layout, self.spec.n_heads, {}
        handles = []
        skipping = _skipped_blocks(self.model, layout, *start) if start is not None else contextlib.nullcontext()
        try:
            for site in plan.sites():
                kind, layer = site
                block = self.model.get_submodule(f"{layout.blocks}.{layer}")
                if kind == "resid":
                    handles.append(block.register_forward_pre_hook(_pre_hook(plan, site, n_heads, out), with_kwargs=True))
                elif kind == "head":
                    handles.append(block.get_submodule(layout.out_proj).register_forward_pre_hook(
                        _pre_hook(plan, site, n_heads, out), with_kwargs=True))
                else:
                    handles.append(block.get_submodule(layout.mlp).register_forward_hook(_post_hook(plan, site, n_heads, out)))
            with torch.no_grad(), skipping:
                result = self.model(**self._hf_inputs(self.model, batch, logits))
        finally:
            for h in handles:
                h.remove()
        return out, (_gather_last(result.logits, batch, logits == "full") if logits else None)


def _first_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _pre_hook(plan, site, n_heads, out):
    def hook(module, args, kwargs):
        apply(plan, site, _first_input(args, kwargs), n_heads, out)

    return hook


def _post_hook(plan, site, n_heads, out):
    def hook(module, args, output):
        apply(plan, site, output[0] if isinstance(output, tuple) else output, n_heads, out)

    return hook


class TransformerLensAdapter(Adapter):
    """TransformerLens ``TransformerBridge`` or legacy ``HookedTransformer`` (duck typed)."""

    name = "transformer_lens"
    HOOKS = {"resid": "blocks.{}.hook_resid_pre", "head": "blocks.{}.attn.hook_z", "mlp": "blocks.{}.hook_mlp_out"}

    def __init__(self, model, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        cfg = model.cfg
        n_ctx, d_vocab = getattr(cfg, "n_ctx", None), getattr(cfg, "d_vocab", None)
        self.spec = ModelSpec("transformer_lens", int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_head), int(cfg.d_model),
                              vocab_size=int(d_vocab) if d_vocab else None, context=int(n_ctx) if n_ctx else None,
                              context_key="cfg.n_ctx" if n_ctx else None)

    def _forward(self, batch, plan, logits, **kwargs):
        if kwargs:
            raise InputError(f"unexpected keyword arguments for a TransformerLens model: {sorted(kwargs)}")
        out, n_heads = {}, self.spec.n_heads

        def make(site):
            def hook(act, hook):
                apply(plan, site, act, n_heads, out)
                return act

            return hook

        hooks = [(self.HOOKS[kind].format(layer), make((kind, layer))) for kind, layer in plan.sites()]
        extra = {}
        if batch.padding_side == "left" or bool((batch.attention_mask == 0).any()):
            extra["attention_mask"] = batch.attention_mask
        with torch.no_grad():
            result = self.model.run_with_hooks(batch.input_ids, fwd_hooks=hooks, return_type="logits", **extra)
        return out, (_gather_last(result, batch, logits == "full") if logits else None)

    def _grad_forward(self, batch, sites, tensors, *, full=False):
        def keep(site, leaf=False):
            def hook(act, hook):
                if leaf:
                    act = act.detach().requires_grad_(True)
                tensors[site] = act
                return act

            return hook

        hooks = [(self.HOOKS["resid"].format(0), keep(("resid", 0), leaf=True))]
        hooks += [(self.HOOKS[k].format(l), keep((k, l))) for k, l in sites if (k, l) != ("resid", 0)]
        logits = self.model.run_with_hooks(batch.input_ids, fwd_hooks=hooks, return_type="logits",
                                           attention_mask=batch.attention_mask)
        if ("resid", 0) not in sites:
            tensors.pop(("resid", 0), None)
        return logits


def _is_nnsight(model) -> bool:
    return any(c.__module__.split(".")[0] == "nnsight" for c in type(model).__mro__)


def _is_transformer_lens(model) -> bool:
    return hasattr(model, "run_with_hooks") and hasattr(model, "hook_dict") and hasattr(model, "cfg")


def adapt(model, tokenizer=None) -> Adapter:
    """The adapter for ``model``; adapters are returned unchanged.

    Raises:
        InputError: if the model is of no type the library knows.
        ArchitectureError: if it is an HF model of an unknown family.
    """
    if isinstance(model, Adapter):
        return model
    if _is_nnsight(model):
        return NNsightAdapter(model, tokenizer)
    if _is_transformer_lens(model):
        return TransformerLensAdapter(model, tokenizer)
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return HFAdapter(model, tokenizer)
    raise InputError(
        "model must be an nnsight model (TransformersModel, LanguageModel, NNsight), a TransformerLens "
        "TransformerBridge or HookedTransformer, or a Hugging Face causal LM (with tokenizer=...); "
        f"received {describe(model)} of type {type(model).__module__}.{type(model).__qualname__}"
    )
