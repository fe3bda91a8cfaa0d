"""Helpers shared by the sparsity, pruning, low-rank and latent-attention tests."""
from __future__ import annotations

import functools

import torch

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 3,
    "Rivers carry water from the mountains to the sea, and towns grow along their banks. " * 3,
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 4,
]
HELD_OUT = ["Bread is made from flour, water, salt and yeast, then baked in a hot oven until golden. " * 2]


@functools.lru_cache(maxsize=4)
def deep_tiny_llama(n_layers: int = 6, seed: int = 0, d_model: int = 64, head_dim: int = 16):
    """A seeded random Llama like ``tiny-llama`` (GQA 4/2 heads, RoPE, SwiGLU) with ``n_layers`` blocks,
    so layer-selection methods have something to choose from."""
    import workbench as wb
    from transformers import LlamaConfig, LlamaForCausalLM
    from workbench.loading.tiny import VOCAB, byte_tokenizer

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=256,
                      rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
                      initializer_range=0.2, bos_token_id=256, eos_token_id=256, pad_token_id=256)
    cfg._attn_implementation = "eager"
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        hf = LlamaForCausalLM(cfg).eval()
    finally:
        torch.random.set_rng_state(state)
    return wb.load(hf, tokenizer=byte_tokenizer())


def snapshot(m) -> dict:
    return {n: p.detach().clone() for n, p in m.hf.named_parameters()}


def same_params(m, snap) -> bool:
    now = dict(m.hf.named_parameters())
    return set(now) == set(snap) and all(torch.equal(now[n].detach(), snap[n]) for n in snap)
