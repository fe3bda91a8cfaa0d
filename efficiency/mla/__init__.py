"""MHA -> MLA, training-free: partial RoPE, a joint low-rank latent of keys and values, a latent KV cache.

``mha2mla`` (registered method): ``prepare(model, texts)`` picks the kept rotary pairs (2-norm criterion)
and converts every layer (``convert_layer``); its intervention installs ``MLAAttention`` modules that
store ``LatentLayer`` caches (d_kv + rope_dims numbers per token and KV head) and decode from them.
"""
from .attention import MLAAttention
from .cache import LatentLayer
from .convert import LayerFactors, convert_layer
from .mha2mla import MHA2MLA, MLAEdit, kv_bytes_mla
from .rope_select import pair_norm_scores, select_pairs
from .analysis import MLAAttentionEffect, MLAReport, mla_attention_effect, mla_report
from .explorer import mla_explorer

__all__ = [
    "mla_explorer", "MLAReport", "mla_report", "MLAAttentionEffect", "mla_attention_effect", "MHA2MLA",
    "MLAEdit", "MLAAttention", "LatentLayer", "LayerFactors", "convert_layer", "kv_bytes_mla",
    "pair_norm_scores", "select_pairs",
]
