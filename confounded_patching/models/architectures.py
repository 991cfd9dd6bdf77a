"""Where each node lives in each model family: one table, kept as data.

A :class:`Layout` names, relative to the Hugging Face causal-LM module, the
list of decoder blocks and, relative to one block, the module whose *input*
holds the per-head values (the attention output projection) and the module
whose *output* is the MLP's own contribution to the residual stream. The
residual stream entering block ``l`` is that block's first input.

Traps this table absorbs (checked on transformers 5.23):

- Bloom's ``self_attention`` and ``mlp`` outputs already include the
  residual; the pure MLP contribution is ``mlp.dense_4h_to_h``'s output.
- Decoder blocks return a tensor for most families but a tuple for Bloom (and
  for all in transformers 4.x); nodes are read from block *inputs*, module
  outputs that are always tensors, and projection inputs, so that never matters.
- Gemma sets its own ``head_dim``; grouped-query attention has fewer KV heads.
  Both are handled by ``head_dim = out_proj.in_features // n_heads``.

Register a new family with :func:`register_architecture`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArchitectureError

__all__ = ["Layout", "ModelSpec", "ARCHITECTURES", "register_architecture", "find_layout", "context_length",
           "CONTEXT_KEYS"]


@dataclass(frozen=True)
class Layout:
    """Module paths of one architecture family.

    Attributes:
        family: name of the family.
        model_types: ``config.model_type`` values that use this layout.
        blocks: dotted path of the decoder-block list from the causal LM.
        out_proj: path, relative to a block, of the attention output projection
            (its input, ``[batch, seq, n_heads * head_dim]``, holds the heads).
        mlp: path, relative to a block, of the module whose output is the MLP
            contribution to the residual stream.
    """

    family: str
    model_types: tuple[str, ...]
    blocks: str
    out_proj: str
    mlp: str


ARCHITECTURES: dict[str, Layout] = {}


def register_architecture(layout: Layout) -> Layout:
    """Add (or replace) a layout; returns it.

    Example::

        register_architecture(Layout("falcon", ("falcon",), "transformer.h", "self_attention.dense", "mlp"))
    """
    ARCHITECTURES[layout.family] = layout
    return layout


for _layout in (
    Layout("gpt2", ("gpt2",), "transformer.h", "attn.c_proj", "mlp"),
    Layout("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "attention.dense", "mlp"),
    Layout("llama", ("llama", "mistral", "smollm", "smollm3", "olmo", "olmo2"), "model.layers", "self_attn.o_proj", "mlp"),
    Layout("qwen2", ("qwen2", "qwen3"), "model.layers", "self_attn.o_proj", "mlp"),
    Layout("phi3", ("phi3",), "model.layers", "self_attn.o_proj", "mlp"),
    Layout("bloom", ("bloom",), "transformer.h", "self_attention.dense", "mlp.dense_4h_to_h"),
    Layout("gemma", ("gemma",), "model.layers", "self_attn.o_proj", "mlp"),
):
    register_architecture(_layout)


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of a model and where its nodes live.

    Attributes:
        vocab_size: token ids the model reads (rows of its input embedding); None if unknown.
        context: the most tokens a prompt may have (``config.n_positions``,
            ``config.max_position_embeddings``, TransformerLens' ``cfg.n_ctx``); None where the model
            has no such limit (Bloom's ALiBi) or it is unknown.
        context_key: where ``context`` was read, for messages (``"config.n_positions"``).
    """

    family: str
    n_layers: int
    n_heads: int
    head_dim: int
    d_model: int
    layout: Layout | None = None
    vocab_size: int | None = None
    context: int | None = None
    context_key: str | None = None

    def node_dim(self, kind: str) -> int:
        return self.head_dim if kind == "head" else self.d_model


def _has_path(module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def find_layout(hf_model) -> Layout:
    """The layout of an HF causal LM: by ``config.model_type``, else by probing module paths."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    for layout in ARCHITECTURES.values():
        if model_type in layout.model_types:
            return layout
    for layout in ARCHITECTURES.values():
        if _has_path(hf_model, layout.blocks):
            block = hf_model.get_submodule(layout.blocks)[0]
            if _has_path(block, layout.out_proj) and _has_path(block, layout.mlp):
                return layout
    looked = "; ".join(f"{l.family}: {l.blocks}[i].{{{l.out_proj}, {l.mlp}}}" for l in ARCHITECTURES.values())
    raise ArchitectureError(
        f"unknown architecture {type(hf_model).__name__} (config.model_type={model_type!r}). "
        f"Looked for these module paths: {looked}. Register a mapping with "
        "confounded_patching.models.register_architecture(Layout(family, model_types, blocks, out_proj, mlp))."
    )


def spec_from_hf(hf_model) -> ModelSpec:
    """Sizes of an HF causal LM, read from its modules and config."""
    layout = find_layout(hf_model)
    blocks = hf_model.get_submodule(layout.blocks)
    cfg = hf_model.config
    n_heads = next(getattr(cfg, a) for a in ("num_attention_heads", "n_head") if getattr(cfg, a, None))
    d_model = next(getattr(cfg, a) for a in ("hidden_size", "n_embd") if getattr(cfg, a, None))
    out_proj = blocks[0].get_submodule(layout.out_proj)
    in_features = getattr(out_proj, "in_features", None)
    if in_features is None:  # GPT-2 Conv1D stores weight as [in, out]
        in_features = out_proj.weight.shape[0]
    vocab_size, (context, context_key) = _vocab_size(hf_model), context_length(cfg)
    return ModelSpec(layout.family, len(blocks), int(n_heads), int(in_features) // int(n_heads), int(d_model), layout,
                     vocab_size, context, context_key)


#: Configuration keys that bound a prompt's length, in the order they are looked for.
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")


def context_length(config, prefix: str = "config") -> tuple[int | None, str | None]:
    """``(positions, "config.KEY")``: the longest prompt a model's configuration allows, or ``(None, None)``.

    GPT-2 and OPT learn one embedding per position (``n_positions``); rotary models (Llama, Qwen2, Phi-3,
    GPT-NeoX, Gemma) name the length they were trained for (``max_position_embeddings``) and run past it
    without an error. Bloom (ALiBi) has no such key and no limit.
    """
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"{prefix}.{key}"
    return None, None


def _vocab_size(hf_model) -> int | None:
    """Rows of the input embedding (the ids the model can read), else ``config.vocab_size``."""
    try:
        rows = getattr(hf_model.get_input_embeddings(), "num_embeddings", None)
    except (AttributeError, NotImplementedError):
        rows = None
    if isinstance(rows, int) and rows > 0:
        return rows
    value = getattr(getattr(hf_model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else None
