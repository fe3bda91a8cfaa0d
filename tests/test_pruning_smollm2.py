"""SmolLM2: the block that writes the massive activation, and what skipping blocks really saves."""
import pytest
import torch

import efficiency as ef
from efficiency.pruning import massive_activation_effect

TEXT = ("The river ran past the old mill and under the stone bridge, where children fished on summer evenings "
        "and the baker's cart crossed every morning before dawn.")


@pytest.mark.smollm2
def test_dropping_the_writer_block_removes_the_massive_activation(smollm2):
    m = smollm2
    base = massive_activation_effect(m, TEXT)
    w = base.writer_layer
    peak = base.norms["base"][:, base.peak_position]
    after = w + 2
    assert base.peak_position == 0 and float(peak[after]) > 20 * float(base.norms["base"][after, 1:].median())
    other = 20 if w < 15 else 5
    res = massive_activation_effect(m, TEXT, {"writer": ef.DropLayers(blocks=[w]), "other": ef.DropLayers(blocks=[other])})
    assert float(res.norms["writer"][after, 0]) < 0.2 * float(peak[after])
    assert float(res.norms["other"][after, 0]) == pytest.approx(float(peak[after]), rel=1e-4)  # upstream of block `other`


@pytest.mark.smollm2
def test_attention_drop_frees_kv_and_decodes_like_recompute(smollm2):
    m = smollm2
    meth = ef.get_method("drop_attention", layers=[20, 24, 26, 28])
    with m.intervene(meth.intervention(m)):
        g = m.generate(TEXT, 4, stop_at_eos=False)
        ref = m.generate(TEXT, 4, stop_at_eos=False, use_cache=False)
    st = g.cache.stats()
    assert st.physical_bytes == meth.cost(m, st.full_tokens).kv_bytes
    # 26 of 30 layers hold K and V (fp32) plus the int64 position of each entry and KV head
    assert st.physical_bytes == st.full_tokens * 26 * 3 * (64 * 2 * 4 + 8)
    assert torch.equal(g.new_tokens, ref.new_tokens) and (g.logits - ref.logits).abs().max() < 1e-3
