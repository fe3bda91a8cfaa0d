"""One-pass extreme-token report equals the four single analyses."""
import pytest
import torch

from probes.sinks import (extreme_token_report, massive_activations, qk_concentration, sink_report,
                    value_drain)
from workbench.errors import InputError

PROMPTS = ["the cat sat on the mat, and the dog sat too.", "a b, c d; e f."]


def test_one_pass_equals_single_analyses(tiny):
    r = extreme_token_report(tiny, PROMPTS)
    s = sink_report(tiny, PROMPTS)
    v = value_drain(tiny, PROMPTS)
    m = massive_activations(tiny, PROMPTS)
    q = qk_concentration(tiny, PROMPTS)
    for a, b in ((r.sinks.received, s.received), (r.sinks.row_entropy, s.row_entropy),
                 (r.sinks.col_entropy, s.col_entropy), (r.values.norms, v.norms), (r.massive.norms, m.norms),
                 (r.massive.ratio, m.ratio), (r.qk.q_maps, q.q_maps), (r.qk.k_maps, q.k_maps), (r.qk.v_maps, q.v_maps)):
        assert torch.equal(a.isnan(), b.isnan()) and torch.allclose(torch.nan_to_num(a), torch.nan_to_num(b), atol=1e-6)
    assert r.qk.rotary == q.rotary
    figs = r.figures()
    assert set(figs) == {"sink_mass", "value_drain", "residual_norms", "qk_dims_L1"}
    assert "SinkReport(" in repr(r) and "QKConcentrationReport(" in repr(r)


def test_one_pass_bad_input(tiny_llama):
    with pytest.raises(InputError, match="has 3 tokens"):
        extreme_token_report(tiny_llama, ["abc"])
    with pytest.raises(InputError, match="out of range"):
        extreme_token_report(tiny_llama, PROMPTS, layers=[3])
    with pytest.raises(InputError, match="factor"):
        extreme_token_report(tiny_llama, PROMPTS, factor=0.5)
