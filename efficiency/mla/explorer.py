"""``mla_explorer``: pick the SVD flavour and d_kv of the MHA2MLA conversion, see what changes."""
from __future__ import annotations

from ..explorer_common import method_explorer
from .mha2mla import MHA2MLA

DEFAULT_DKV = (8, 16, 32, 64)


def mla_explorer(model, prompt: str, texts, d_kvs=DEFAULT_DKV, rope_dims: int = 8, svds=("plain", "whitened")):
    """SVD dropdown ("plain": the paper's joint SVD; "whitened": by the attention input's covariance) and a
    d_kv slider. The per-layer panel shows the attention mass on position 0 (the sink), mean over heads,
    inside the converted layers (recorded by the latent attention)."""
    built: dict = {}

    def method(svd, d):
        if (svd, d) not in built:
            m = MHA2MLA(d_kv=d, rope_dims=rope_dims, svd=svd)
            m.prepare(model, texts)
            built[svd, d] = m
        return built[svd, d]

    def detail(model_, svd, d, _iv):
        edit = method(svd, d).intervention(model_)
        with model_.without_interventions(), model_.intervene(edit):
            for mod in edit.modules.values():
                mod.record_attention = True
            model_.run(prompt, logits=None)
            vals = [float(edit.modules[l].last_pattern[0, :, 1:, 0].mean()) if l in edit.modules else 0.0
                    for l in range(model_.info.n_layers)]
        return vals, "attention mass on position 0 (converted layers)"

    box = method_explorer(model, prompt, lambda s, d: method(s, d).intervention(model), svds, d_kvs, detail,
                          strength_name="d_kv")
    box.method = method
    return box
