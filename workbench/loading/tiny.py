"""Tiny random models built locally, with no download, for fast unit tests.

- ``tiny-llama``: Llama architecture with GQA (4 query heads, 2 KV heads), RoPE, RMSNorm, SwiGLU.
- ``tiny-gpt2``: GPT-2 architecture with LayerNorm and learned positions.

Both use a byte-level tokenizer (256 byte tokens plus ``<|endoftext|>`` as id 256), written once
to the cache directory and loaded with ``from_pretrained`` (TransformerBridge needs a tokenizer
that came from a folder).
"""
from __future__ import annotations

import json
import warnings

import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from ..errors import ModelLoadError
from ..paths import atomic_dir, cache_dir

EOS = "<|endoftext|>"
VOCAB = 260  # 256 bytes + EOS, rounded up
TINY_MODELS = ("tiny-llama", "tiny-gpt2")


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is one token."""
    path = cache_dir() / "tiny-byte-tokenizer-v1"
    if (path / "tokenizer.json").exists():
        try:
            return AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # corrupt cache entry: rebuild it (as fp32_cache does), never crash
            warnings.warn(f"workbench: cached tokenizer at {path} is unreadable ({type(exc).__name__}: {exc}); "
                          "rebuilding it.")
    # (Re)build; atomic_dir swaps a corrupt entry for the new one in one rename.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab[EOS] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    with atomic_dir(path) as tmp:
        fast.save_pretrained(tmp)
    tok = AutoTokenizer.from_pretrained(path)
    return tok


def _tiny_config(kind: str, n_ctx: int):
    if kind == "tiny-llama":
        return LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=n_ctx,
            rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
            initializer_range=0.2, bos_token_id=256, eos_token_id=256, pad_token_id=256,
        )
    if kind == "tiny-gpt2":
        return GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=n_ctx,
            initializer_range=0.2, bos_token_id=256, eos_token_id=256, pad_token_id=256,
        )
    raise ModelLoadError(f"Unknown tiny model {kind!r}; choose one of {TINY_MODELS}.")


def build_tiny(kind: str, seed: int = 0, n_ctx: int = 256):
    """Return ``(hf_model, tokenizer)`` for a seeded random tiny model (fp32, eager attention)."""
    cfg = _tiny_config(kind, n_ctx)
    cfg._attn_implementation = "eager"
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        cls = LlamaForCausalLM if kind == "tiny-llama" else GPT2LMHeadModel
        hf = cls(cfg).eval()
    finally:
        torch.random.set_rng_state(gen_state)
    hf.config.architectures = [cls.__name__]
    hf.config.name_or_path = f"workbench/{kind}"
    return hf, byte_tokenizer()


def tiny_config_json(kind: str) -> str:
    return json.dumps(_tiny_config(kind, 256).to_dict(), sort_keys=True)
