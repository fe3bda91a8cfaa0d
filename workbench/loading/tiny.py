"""Tiny random models built locally, with no download, for fast unit tests: one per architecture
family whose differences matter to the analyses.

- ``tiny-llama``: Llama (GQA 4 query / 2 KV heads, RoPE, RMSNorm, SwiGLU, untied embeddings).
- ``tiny-gpt2``: GPT-2 (LayerNorm, learned positions, fused QKV in a Conv1D, biases, tied embeddings).
- ``tiny-gemma2``: Gemma 2 (norms before *and after* attention and MLP, RMSNorm with a 1 + w gain,
  embeddings scaled by √d, alternating sliding-window layers, attention and final logit soft-capping).
- ``tiny-gemma3``: Gemma 3 text (as Gemma 2 plus q/k norms; sliding-window layers, no soft-capping).
- ``tiny-qwen2``: Qwen 2 (biases on Q, K and V).
- ``tiny-qwen3``: Qwen 3 (RMSNorm on each head's queries and keys).
- ``tiny-neox``: GPT-NeoX / Pythia (attention and MLP in parallel from the same residual, partial
  rotary on a quarter of each head, LayerNorm, no GQA).

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
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ..errors import ModelLoadError
from ..paths import atomic_dir, cache_dir

EOS = "<|endoftext|>"
VOCAB = 260  # 256 bytes + EOS, rounded up
TINY_MODELS = ("tiny-llama", "tiny-gpt2", "tiny-gemma2", "tiny-gemma3", "tiny-qwen2", "tiny-qwen3", "tiny-neox")


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


_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               initializer_range=0.2, bos_token_id=256, eos_token_id=256, pad_token_id=256)
# Gemma: a 4-token sliding window on layer 0 (layer 1 is global), so windows matter in short tests
_GEMMA = dict(num_key_value_heads=2, head_dim=16, sliding_window=4, query_pre_attn_scalar=16, rms_norm_eps=1e-6)


def _tiny_config(kind: str, n_ctx: int):
    """(config, model class) of a tiny family."""
    if kind == "tiny-llama":
        return LlamaConfig(**_COMMON, num_key_value_heads=2, head_dim=16, max_position_embeddings=n_ctx,
                           rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False), \
            LlamaForCausalLM
    if kind == "tiny-gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=n_ctx,
                          initializer_range=0.2, bos_token_id=256, eos_token_id=256, pad_token_id=256), GPT2LMHeadModel
    if kind == "tiny-gemma2":
        return Gemma2Config(**_COMMON, **_GEMMA, max_position_embeddings=n_ctx, final_logit_softcapping=30.0,
                            attn_logit_softcapping=50.0, layer_types=["sliding_attention", "full_attention"]), \
            Gemma2ForCausalLM
    if kind == "tiny-gemma3":
        return Gemma3TextConfig(**_COMMON, **_GEMMA, max_position_embeddings=n_ctx,
                                layer_types=["sliding_attention", "full_attention"]), Gemma3ForCausalLM
    if kind == "tiny-qwen2":
        return Qwen2Config(**_COMMON, num_key_value_heads=2, max_position_embeddings=n_ctx,
                           tie_word_embeddings=False), Qwen2ForCausalLM
    if kind == "tiny-qwen3":
        return Qwen3Config(**_COMMON, num_key_value_heads=2, head_dim=16, max_position_embeddings=n_ctx,
                           tie_word_embeddings=False), Qwen3ForCausalLM
    if kind == "tiny-neox":
        return GPTNeoXConfig(**_COMMON, max_position_embeddings=n_ctx, rotary_pct=0.25, use_parallel_residual=True,
                             tie_word_embeddings=False), GPTNeoXForCausalLM
    raise ModelLoadError(f"Unknown tiny model {kind!r}; choose one of {TINY_MODELS}.")


def build_tiny(kind: str, seed: int = 0, n_ctx: int = 256):
    """Return ``(hf_model, tokenizer)`` for a seeded random tiny model (fp32, eager attention)."""
    cfg, cls = _tiny_config(kind, n_ctx)
    cfg._attn_implementation = "eager"
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        hf = cls(cfg).eval()
    finally:
        torch.random.set_rng_state(gen_state)
    hf.config.architectures = [cls.__name__]
    hf.config.name_or_path = f"workbench/{kind}"
    return hf, byte_tokenizer()


def tiny_config_json(kind: str) -> str:
    return json.dumps(_tiny_config(kind, 256)[0].to_dict(), sort_keys=True)
