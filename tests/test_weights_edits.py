"""The weights accessor, exact weight editing, forward sessions and hook names (the boundary of Model)."""
import pytest
import torch
from torch import nn

import workbench as wb
from workbench import InputError, WeightEdit, hook_name
from workbench.errors import HookError
from workbench.kv_cache import KVCache

PROMPT = "The cat sat on the mat."


def _snapshot(m):
    return {n: p.detach().clone() for n, p in m.hf.named_parameters()}


def _same_params(m, snap):
    now = dict(m.hf.named_parameters())
    return set(now) == set(snap) and all(torch.equal(now[n].detach(), snap[n]) for n in snap)


# ------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_weights_layouts_and_unembed_reproduce_the_logits(name, request):
    m = request.getfixturevalue(name.replace("-", "_"))
    W, i = m.weights(), m.info
    assert W.n_layers == i.n_layers
    lw = W.layers[0]
    assert lw.W_Q.shape == (i.n_heads, i.d_model, i.d_head)
    assert lw.W_K.shape == lw.W_V.shape == (i.n_kv_heads, i.d_model, i.d_head)
    assert lw.W_O.shape == (i.n_heads, i.d_head, i.d_model)
    assert lw.W_in.shape == (i.d_model, i.d_mlp) and lw.W_out.shape == (i.d_mlp, i.d_model)
    assert torch.equal(W.stacked("W_O")[1], m.W_O(1))
    run = m.run(PROMPT, capture=["resid_post"], layers=[i.n_layers - 1])
    got = W.unembed(run["resid_post", i.n_layers - 1])
    assert torch.allclose(got, run.logits, atol=1e-5)
    with pytest.raises(InputError, match="per-layer weight"):
        W.stacked("ln1")


def test_weights_q_projection_matches_the_hook(tiny_llama):
    m = tiny_llama
    run = m.run(PROMPT, capture=["attn_in", "q"], layers=[1])
    lw = m.weights().layers[1]
    q = torch.einsum("btd,hde->bthe", run["attn_in", 1], lw.W_Q)
    assert torch.allclose(q, run["q", 1], atol=1e-5)
    # the norm computed from the weights equals the model's normalized input
    resid = m.run(PROMPT, capture=["resid_pre"], layers=[1])["resid_pre", 1]
    assert torch.allclose(lw.ln1(resid), run["attn_in", 1] * lw.ln1.w, atol=1e-5)


# ------------------------------------------------------------------------------------------ editing
def test_edit_is_seen_then_restored_bit_exact(tiny_llama):
    m = tiny_llama
    snap = _snapshot(m)
    before = m.run(PROMPT).logits
    v0 = m.weights_version
    w = m.linear_weight(1, "down")
    with m.edit_weights() as ed:
        ed.set_linear(1, "down", weight=torch.zeros_like(w))
        assert m.weights_version > v0
        assert torch.count_nonzero(m.weights().layers[1].W_out) == 0
        assert torch.count_nonzero(m.linear_weight(1, "down")) == 0
        assert m.active_edits() == [("L1.down", "weights edited")]
        assert not torch.allclose(m.run(PROMPT).logits, before)
    assert _same_params(m, snap) and m.active_edits() == []
    assert torch.equal(m.run(PROMPT).logits, before)
    assert torch.equal(m.weights().layers[1].W_out, snap["model.layers.1._original_component.mlp._original_component."
                                                         "down_proj._original_component.weight"].t())


def test_restore_after_an_exception_and_bad_edits(tiny_llama):
    m = tiny_llama
    snap = _snapshot(m)
    with pytest.raises(RuntimeError, match="boom"):
        with m.edit_weights() as ed:
            ed.set_linear(0, "q", weight=torch.ones_like(m.linear_weight(0, "q")))
            ed.set_norm(None, weight=torch.full((m.info.d_model,), 2.0))
            raise RuntimeError("boom")
    assert _same_params(m, snap)
    with m.edit_weights() as ed:
        with pytest.raises(InputError, match="expected shape"):
            ed.set_linear(0, "q", weight=torch.zeros(3, 3))
        with pytest.raises(InputError, match="NaN"):
            ed.set_linear(0, "q", weight=torch.full_like(m.linear_weight(0, "q"), float("nan")))
        with pytest.raises(InputError, match="not available"):
            ed.set_linear(0, "qkv", weight=torch.zeros(1))
        with pytest.raises(InputError, match="out of range"):
            ed.set_linear(9, "q", weight=torch.zeros(1))
    with pytest.raises(InputError, match="closed"):
        ed.set_linear(0, "q", weight=m.linear_weight(0, "q"))


class _Linear(nn.Module):
    """A re-implemented linear with the same weights (and a counter proving it ran)."""

    def __init__(self, w, b=None):
        super().__init__()
        self.weight, self.bias, self.calls = nn.Parameter(w.clone()), b, 0

    def forward(self, x):
        self.calls += 1
        return nn.functional.linear(x, self.weight, self.bias)


def test_replace_linear_runs_the_module_and_hooks_keep_firing(tiny_llama):
    m = tiny_llama
    ref = m.run(PROMPT, capture=["q"], layers=[0])
    mod = _Linear(m.linear_weight(0, "q"))
    with m.edit_weights() as ed:
        ed.replace_linear(0, "q", mod)
        run = m.run(PROMPT, capture=["q"], layers=[0])
        assert m.active_edits() == [("L0.q", "replaced by _Linear")]
        assert torch.equal(m.weights().layers[0].W_Q, m.weights().layers[0].W_Q)  # readable through .weight
    assert mod.calls == 1
    assert torch.allclose(run["q", 0], ref["q", 0]) and torch.allclose(run.logits, ref.logits)
    assert m.linear_module(0, "q") is not mod


def test_set_unembedding_unties_tied_weights_and_reties(tiny_gpt2):
    m = tiny_gpt2
    emb, head = m.embedding_module(), m.unembedding_module()
    assert emb.weight is head.weight  # GPT-2 ties them
    W_U = m.weights().W_U
    with m.edit_weights() as ed:
        ed.set_unembedding(torch.zeros_like(W_U))
        assert torch.count_nonzero(m.weights().W_U) == 0
        assert torch.count_nonzero(m.weights().W_E) > 0  # the embedding kept its values
        logits = m.run(PROMPT).logits
    assert torch.count_nonzero(logits - logits[..., :1]) == 0 or torch.allclose(logits, logits[..., :1].expand_as(logits))
    assert m.embedding_module().weight is m.unembedding_module().weight


class _ZeroMLP(WeightEdit):
    def __init__(self, layer):
        self.layer = layer

    def edit(self, model, editor):
        editor.set_linear(self.layer, "down", weight=torch.zeros_like(model.linear_weight(self.layer, "down")))


def test_weight_edit_intervention_and_clean_reference(tiny_llama):
    m = tiny_llama
    clean = m.run(PROMPT).logits
    per_call = m.run(PROMPT, interventions=[_ZeroMLP(1)]).logits
    assert not torch.allclose(per_call, clean)
    assert torch.equal(m.run(PROMPT).logits, clean)
    ablated = m.run(PROMPT, interventions=[wb.Compose([])], capture=[]).logits
    assert torch.equal(ablated, clean)
    with m.intervene(_ZeroMLP(1)):
        assert torch.allclose(m.run(PROMPT).logits, per_call)
        with m.without_interventions():
            assert torch.equal(m.run(PROMPT).logits, clean)  # weight edits undone for the reference
        assert torch.allclose(m.run(PROMPT).logits, per_call)  # and back in force
    assert torch.equal(m.run(PROMPT).logits, clean)


def test_parameter_bytes_count_real_storage(tiny_llama):
    m = tiny_llama
    expected = sum(p.numel() * p.element_size() for p in m.hf.parameters())
    buffers = sum(b.numel() * b.element_size() for b in m.hf.buffers())
    assert m.parameter_bytes() == expected + buffers
    q = torch.ao.nn.quantized.dynamic.Linear(m.info.d_model, m.info.d_mlp, bias_=False)
    q.set_weight_bias(torch.quantize_per_tensor(m.linear_weight(0, "up"), 0.01, 0, torch.qint8), None)
    with m.edit_weights() as ed:
        ed.replace_linear(0, "up", q)
        w = m.linear_weight(0, "up")
        assert m.parameter_bytes() == expected + buffers - w.numel() * 4 + w.numel()


# ------------------------------------------------------------------------------------------ sessions
def test_session_forward_cached_matches_generate(tiny_llama):
    m = tiny_llama
    g = m.generate(PROMPT, 3, stop_at_eos=False)
    ids, _ = m.tokenize(PROMPT)
    cache = KVCache.empty(m)
    seen = []
    with m.session(observe_attention=lambda l, p: seen.append((l, tuple(p.shape)))) as s:
        logits = [s.forward_cached(cache, ids)[0, -1]]
        for t in g.new_tokens[:-1].tolist():
            logits.append(s.forward_cached(cache, torch.tensor([[t]]))[0, -1])
    assert torch.allclose(torch.stack(logits), g.logits, atol=1e-5)
    assert seen[0] == (0, (1, m.info.n_heads, ids.shape[1], ids.shape[1]))
    assert m.leftover_hooks() == []


def test_session_required_hook_must_fire_and_hooks_leave(tiny_llama):
    m = tiny_llama
    with pytest.raises(HookError, match="never fired"):
        with m.session(hooks=[(hook_name("resid_post", 1), lambda x, n: None)]) as s:
            s.forward(m.tokenize(PROMPT)[0], stop_at_layer=1)
    assert m.leftover_hooks() == []


def test_kv_cache_expand_and_select(tiny_llama):
    m = tiny_llama
    cache = m.prefill(PROMPT)
    ref = cache.keys(0).clone()
    cache.expand(3)
    assert cache.keys(0).shape[0] == 3 and cache.positions[0].shape[0] == 3
    with pytest.raises(InputError, match="already has batch size"):
        cache.expand(2)
    cache.select(2)
    assert torch.equal(cache.keys(0), ref) and cache.keys(0).is_contiguous()
    with pytest.raises(InputError, match="out of range"):
        cache.select(5)


def test_hook_name_is_the_one_source():
    assert hook_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert hook_name("final_resid") == "ln_final.hook_normalized"
    assert hook_name("q_rot", 0) == "blocks.0.attn.hook_rot_q"
    with pytest.raises(HookError, match="per layer"):
        hook_name("pattern")
    with pytest.raises(HookError, match="not per layer"):
        hook_name("embed", 2)
    with pytest.raises(HookError, match="computed from"):
        hook_name("head_out", 1)
    with pytest.raises(HookError, match="Did you mean"):
        hook_name("resid_pst", 1)
