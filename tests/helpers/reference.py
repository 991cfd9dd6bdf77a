"""Independent references: plain torch hooks on an HF model, one prompt at a time, no padding.

These do not use the library's adapters, plans or architecture table: module
paths are spelled out here per family.
"""

from __future__ import annotations

import torch

PATHS = {  # family: (blocks, attention output projection, MLP contribution module)
    "gpt2": ("transformer.h", "attn.c_proj", "mlp"),
    "neox": ("gpt_neox.layers", "attention.dense", "mlp"),
    "llama": ("model.layers", "self_attn.o_proj", "mlp"),
    "qwen2": ("model.layers", "self_attn.o_proj", "mlp"),
    "phi3": ("model.layers", "self_attn.o_proj", "mlp"),
    "bloom": ("transformer.h", "self_attention.dense", "mlp.dense_4h_to_h"),
    "gemma": ("model.layers", "self_attn.o_proj", "mlp"),
    "smollm2": ("model.layers", "self_attn.o_proj", "mlp"),
}


def hook_acts(hf, family: str, ids: list[int], n_heads: int) -> dict:
    """Full-sequence activations of one unpadded prompt: resid [S, d], z [S, H, hd], mlp [S, d], logits [V]."""
    blocks_path, out_proj, mlp = PATHS[family]
    blocks = hf.get_submodule(blocks_path)
    acts, handles = {}, []
    for layer, block in enumerate(blocks):
        def pre(module, args, kwargs, layer=layer):
            x = args[0] if args else kwargs["hidden_states"]
            acts["resid", layer] = x[0].detach().clone()

        def z_hook(module, args, layer=layer):
            acts["z", layer] = args[0][0].detach().clone().unflatten(-1, (n_heads, -1))

        def mlp_hook(module, args, output, layer=layer):
            out = output[0] if isinstance(output, tuple) else output
            acts["mlp", layer] = out[0].detach().clone()

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.get_submodule(out_proj).register_forward_pre_hook(z_hook))
        handles.append(block.get_submodule(mlp).register_forward_hook(mlp_hook))
    try:
        with torch.no_grad():
            acts["logits"] = hf(torch.tensor([ids])).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    return acts


def node_value(acts: dict, node) -> torch.Tensor:
    """A node's value at its position from :func:`hook_acts` output."""
    pos = node.pos  # unpadded: negative counts from the end, non-negative from the start
    if node.kind == "resid":
        return acts["resid", node.layer][pos]
    if node.kind == "mlp":
        return acts["mlp", node.layer][pos]
    return acts["z", node.layer][pos, node.head]


def hand_patched_metric(hf, ids_target, node, value, n_heads):
    """Hook-based patch of one node on one unpadded prompt (independent of the library)."""
    blocks_path, out_proj, mlp = PATHS["llama"]
    block = hf.get_submodule(blocks_path)[node.layer]

    def pre(module, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        x[0, node.pos] = value
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    def z_pre(module, args):
        x = args[0].clone().unflatten(-1, (n_heads, -1))
        x[0, node.pos, node.head] = value
        return (x.flatten(-2),)

    def mlp_post(module, args, output):
        out = output.clone()
        out[0, node.pos] = value
        return out

    if node.kind == "resid":
        h = block.register_forward_pre_hook(pre, with_kwargs=True)
    elif node.kind == "head":
        h = block.get_submodule(out_proj).register_forward_pre_hook(z_pre)
    else:
        h = block.get_submodule(mlp).register_forward_hook(mlp_post)
    try:
        with torch.no_grad():
            return hf(torch.tensor([ids_target])).logits[0, -1]
    finally:
        h.remove()


def node_gradient(hf, family: str, ids: list[int], node, metric_fn, n_heads: int):
    """(value, d metric / d value) of ``node`` on one unpadded prompt, by hand: torch hooks + autograd.

    The node's site tensor is replaced by a leaf copy inside the forward pass, so the gradient is the
    partial derivative at the node with everything upstream held fixed; ``metric_fn`` maps the
    last-position logits ``[vocab]`` to a scalar. Positions: ``node.pos`` (negative from the end), or
    every position for ``pos=None``.
    """
    blocks_path, out_proj, mlp = PATHS[family]
    block = hf.get_submodule(blocks_path)[node.layer]
    leaf = {}

    def make_leaf(x):
        x = x.detach().clone().requires_grad_(True)
        leaf["x"] = x
        return x

    def pre(module, args, kwargs):
        if args:
            return (make_leaf(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": make_leaf(kwargs["hidden_states"])}

    def z_pre(module, args):
        return (make_leaf(args[0]), *args[1:])

    def mlp_post(module, args, output):
        if isinstance(output, tuple):
            return (make_leaf(output[0]), *output[1:])
        return make_leaf(output)

    if node.kind == "resid":
        handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    elif node.kind == "head":
        handle = block.get_submodule(out_proj).register_forward_pre_hook(z_pre)
    else:
        handle = block.get_submodule(mlp).register_forward_hook(mlp_post)
    try:
        with torch.enable_grad():
            y = metric_fn(hf(torch.tensor([ids])).logits[0, -1])
            (grad,) = torch.autograd.grad(y, [leaf["x"]])
    finally:
        handle.remove()
    value, grad = leaf["x"][0].detach(), grad[0]
    if node.kind == "head":
        value, grad = value.unflatten(-1, (n_heads, -1))[:, node.head], grad.unflatten(-1, (n_heads, -1))[:, node.head]
    if node.pos is not None:
        value, grad = value[node.pos], grad[node.pos]
    return value, grad
