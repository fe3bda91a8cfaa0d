"""Write the tiny Llama as a GGUF file (F32 tensors), so GGUF loading is tested and shown offline.

The layout is what llama.cpp's converter writes and transformers' GGUF loader reads back: tensors
named ``token_embd``, ``blk.N.attn_q`` ..., the query and key rows permuted to llama.cpp's rotary
order, and a byte-level ("gpt2") tokenizer without merges. Loading the file with ``workbench.load``
gives back the same logits as the model it was written from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..paths import atomic_write_bytes
from .tiny import build_tiny


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp's interleaved order (transformers undoes it on load)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, seed: int = 0) -> Path:
    """Write ``tiny-llama`` (seed ``seed``) to ``path`` as a GGUF file; returns the path."""
    import tempfile

    import gguf

    hf, tok = build_tiny("tiny-llama", seed=seed)
    c = hf.config
    theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta") or getattr(c, "rope_theta", 10000.0)
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        w = gguf.GGUFWriter(str(out), "llama")
        w.add_name("tiny-llama")
        w.add_context_length(c.max_position_embeddings)
        w.add_block_count(c.num_hidden_layers)
        w.add_feed_forward_length(c.intermediate_size)
        w.add_embedding_length(c.hidden_size)
        w.add_rope_dimension_count(c.head_dim)
        w.add_rope_freq_base(float(theta))
        w.add_head_count(c.num_attention_heads)
        w.add_head_count_kv(c.num_key_value_heads)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_vocab_size(c.vocab_size)
        tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
        tokens += [f"<unused{i}>" for i in range(len(tokens), c.vocab_size)]
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([1] * len(tokens))
        w.add_token_scores([0.0] * len(tokens))
        w.add_token_merges([])
        for add in (w.add_eos_token_id, w.add_bos_token_id, w.add_pad_token_id):
            add(tok.eos_token_id)
        sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
        w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
        w.add_tensor("output_norm.weight", sd["model.norm.weight"])
        w.add_tensor("output.weight", sd["lm_head.weight"])
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
            w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
            w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
            w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
            w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
            w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
            w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
            w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
            w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        atomic_write_bytes(path, out.read_bytes())
    return path
