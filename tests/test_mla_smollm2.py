"""SmolLM2: the MHA2MLA conversion at full rank with every RoPE pair reproduces the model."""
import pytest

from efficiency.mla import MHA2MLA

TEXT = "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of"


@pytest.mark.smollm2
def test_full_rank_conversion_reproduces_smollm2(smollm2):
    m = smollm2
    ref = m.run(TEXT).logits
    meth = MHA2MLA(d_kv=64, rope_dims=64)  # every pair rotated, latent of full value rank
    meth.prepare(m, [TEXT])
    with m.intervene(meth.intervention(m)):
        out = m.run(TEXT).logits
        st = m.prefill(TEXT).stats()
    assert (out - ref).abs().max() <= 1e-4
    assert st.physical_bytes == st.full_tokens * 30 * 3 * ((64 + 64) * 4 + 8)  # + the int64 position index
