"""Tiny random-initialised models of every supported family, built from configs.

Nothing is downloaded: configs are written here and the tokenizer is a
word-level tokenizer over a fixed vocabulary of 100 tokens.
"""

from __future__ import annotations

import functools

import torch

VOCAB = ["<pad>", "<bos>", "<unk>"] + [f"w{i}" for i in range(97)]
FAMILIES = ("gpt2", "neox", "llama", "qwen2", "phi3", "bloom", "gemma")


@functools.lru_cache(maxsize=None)
def tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", unk_token="<unk>",
                                   eos_token="<pad>")
    fast.init_kwargs["name_or_path"] = "tiny-word-level"
    return fast


def config(family: str, n_layers: int = 2):
    import transformers as tf

    common = dict(vocab_size=len(VOCAB), pad_token_id=0, bos_token_id=1, eos_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=n_layers, n_head=4, n_positions=64, **common)
    if family == "neox":
        return tf.GPTNeoXConfig(hidden_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=64, **common)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common)
    if family == "qwen2":
        return tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **common)
    if family == "phi3":
        return tf.Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                             **common)
    if family == "bloom":
        return tf.BloomConfig(hidden_size=64, n_layer=n_layers, n_head=4, **common)
    if family == "gemma":
        return tf.GemmaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=24,
                              max_position_embeddings=64, **common)
    raise ValueError(family)


def hf_model(family: str, seed: int = 0, n_layers: int = 2):
    """A random-initialised causal LM of ``family`` in eval mode, fp32, eager attention."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = config(family, n_layers)
    cfg._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random biases and norm weights so that nothing is trivially zero
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def prompts(n: int = 5, seed: int = 0, lo: int = 3, hi: int = 9) -> list[str]:
    """Ragged prompts of lo..hi words."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = torch.randint(3, len(VOCAB), (length,), generator=g).tolist()
        out.append(" ".join(VOCAB[i] for i in ids))
    return out


@functools.lru_cache(maxsize=None)
def _tokenizer_dir() -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="cp-tiny-tokenizer-")
    tokenizer().save_pretrained(path)
    return path


def bridge(hf, *, compat: bool = False):
    """A TransformerLens TransformerBridge around a deep copy of ``hf`` (booting mutates the model)."""
    import copy
    import os

    from transformers import AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(_tokenizer_dir())
    model = TransformerBridge.boot_transformers("tiny", hf_model=copy.deepcopy(hf), tokenizer=tok, device="cpu")
    model.eval()
    if compat:
        model.enable_compatibility_mode()
    return model
