"""The hook-free path and the workbench's own cache layers give the hooked path's results.

- ``Model.forward_tokens`` with nothing hooked runs the plain view: identical logits and tokens to the
  hooked TransformerBridge path on every loader, under weight edits, replaced linears (a torch.ao int8
  linear included) and replaced components; any hook sends the pass back to the bridge.
- A preallocated cache is written in place (no reallocation while decoding), eviction compacts the
  kept entries inside it (exactly the entries, positions and values, the policy chose) and shrinks
  it to kept + remaining room.
- Ragged (per-head) and KIVI layers attend from their own storage on the plain path, equal to the
  reference attention (padded view with masks / dequantized cache) up to float rounding.
"""
import contextlib

import pytest
import torch
from torch import nn

import workbench as wb
from efficiency.kv import RaggedLayer, get_policy, ragged_attention
from efficiency.kv.quantized import KIVIQuantization
from workbench import settings
from workbench.errors import InputError
from workbench.generation import cached_forward
from workbench.hook_names import hook_name
from workbench.kv_cache import PreallocatedLayer

PROMPT = "The quick brown fox jumps over the lazy dog. A second sentence follows here. " * 2


@contextlib.contextmanager
def hooked_only():
    """Every forward inside takes the hooked TransformerBridge path."""
    old = settings.fast_path
    settings.fast_path = False
    try:
        yield
    finally:
        settings.fast_path = old


def _both(fn):
    """(result on the default path, result with the fast path off)."""
    a = fn()
    with hooked_only():
        b = fn()
    return a, b


def _assert_same_run_and_generation(m, prompt=PROMPT, n=6, generate=True):
    assert m.fast_path_status() is None, m.fast_path_status()
    ids, _ = m.tokenize([prompt, prompt[:40]])
    with torch.no_grad():
        a, b = _both(lambda: m.run(ids).logits)
    assert torch.equal(a, b)
    if not generate:
        return
    ga, gb = _both(lambda: m.generate(prompt, n, stop_at_eos=False))
    assert ga.new_tokens.tolist() == gb.new_tokens.tolist() and torch.equal(ga.logits, gb.logits)


# ---------------------------------------------------------------- the plain view
def test_plain_path_identical_on_tiny_models(tiny):
    _assert_same_run_and_generation(tiny)
    before = tiny.forward_count
    tiny.run(PROMPT)
    assert tiny.forward_count == before + 1  # still counted


@pytest.mark.parametrize("family", ["tiny-gemma2", "tiny-gemma3", "tiny-qwen2", "tiny-qwen3", "tiny-neox"])
def test_plain_path_identical_on_other_families(family):
    """Sliding-window and soft-capped attention (Gemma), q/k norms (Qwen 3), fused per-head QKV (NeoX)."""
    m = wb.load(family)
    _assert_same_run_and_generation(m)
    p, d = (m.generate(PROMPT, 5, stop_at_eos=False, cache=k) for k in ("preallocated", "dynamic"))
    assert p.new_tokens.tolist() == d.new_tokens.tolist()
    torch.testing.assert_close(p.logits, d.logits, atol=1e-5, rtol=1e-5)


def test_plain_path_identical_on_a_checkpoint_folder(tmp_path):
    from workbench.loading.tiny import build_tiny

    hf, tok = build_tiny("tiny-llama", seed=3)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m = wb.load(tmp_path)
    _assert_same_run_and_generation(m)


def test_plain_view_shares_the_modules_the_bridge_calls(tiny_llama):
    m = tiny_llama
    assert m.fast_path_status() is None
    plain = m._plain_view.module
    names = {n for n, _ in plain.named_modules()}
    assert not any("hook_" in n or "_original_component" in n for n in names)
    q = m.linear_module(0, "q")
    assert plain.model.layers[0].self_attn.q_proj is q  # the same nn.Linear object
    assert plain.lm_head is m.unembedding_module()


class _Scaled(nn.Module):
    """A replacement linear: weight (out, in) plus a scale."""

    def __init__(self, weight, scale=1.5):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = None
        self.scale = scale

    def forward(self, x):
        return nn.functional.linear(x, self.weight) * self.scale


class _HalfMLP(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.inner = mlp

    def forward(self, x):
        return 0.5 * self.inner(x)


class _SkipBlock(nn.Module):
    def forward(self, hidden_states, **kwargs):
        return hidden_states


def test_plain_path_identical_under_edits(tiny_llama):
    m = tiny_llama
    clean = m.run(PROMPT).logits
    with m.edit_weights() as ed:
        ed.set_linear(0, "down", weight=m.linear_weight(0, "down") * 0.3)
        ed.set_norm(1, "ln1", weight=torch.ones(m.info.d_model) * 0.7)
        ed.replace_linear(1, "q", _Scaled(m.linear_weight(1, "q")))
        ed.replace_component(0, "mlp", _HalfMLP(m.component_wrapper(0, "mlp")._original_component))
        _assert_same_run_and_generation(m)
        edited = m.run(PROMPT).logits
        assert not torch.allclose(edited, clean)
        with m.edit_weights() as ed2:
            ed2.replace_component(1, "block", _SkipBlock())
            _assert_same_run_and_generation(m, generate=False)  # a skipped block fills no cache layer
            assert not torch.allclose(m.run(PROMPT).logits, edited)
        assert torch.equal(m.run(PROMPT).logits, edited)  # the block is back
    assert torch.equal(m.run(PROMPT).logits, clean)
    assert m.fast_path_status() is None


def test_plain_path_identical_with_int8_linears(tiny_llama):
    m = tiny_llama
    if "fbgemm" not in torch.backends.quantized.supported_engines and "x86" not in torch.backends.quantized.supported_engines:
        pytest.skip("no int8 CPU engine")
    with m.edit_weights() as ed:
        for kind in ("q", "up", "down"):
            w = m.linear_weight(0, kind)
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data = w.clone()
            q = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)[0]
            ed.replace_linear(0, kind, q)
        _assert_same_run_and_generation(m)


def test_untied_unembedding_seen_by_plain_path(tiny_gpt2):
    m = tiny_gpt2
    clean = m.run(PROMPT).logits
    with m.edit_weights() as ed:
        ed.set_unembedding(m.weights().W_U * 0.5)
        _assert_same_run_and_generation(m)
        assert not torch.allclose(m.run(PROMPT).logits, clean)
    assert torch.equal(m.run(PROMPT).logits, clean)


def test_any_hook_takes_the_hooked_path(tiny_llama):
    m = tiny_llama
    ids, _ = m.tokenize(PROMPT)
    name = hook_name("resid_post", 0)
    seen = []
    with m.session(hooks=[(name, lambda x, n: seen.append(1))]) as s:
        assert m.fast_path_status() == "hooks are attached"
        s.forward(ids)
    assert seen == [1] and m.fast_path_status() is None
    # a TransformerLens hook added behind the workbench's back is honoured too
    point = dict(m.bridge.hook_dict)[name]
    handle = point.register_forward_hook(lambda mod, i, o: seen.append(2))
    try:
        m.run(ids)
    finally:
        handle.remove()
    assert seen == [1, 2]
    m.run(ids)
    assert seen == [1, 2] and m.fast_path_status() is None


def test_replaced_module_assignment_rebuilds_the_view(tiny_llama):
    m = tiny_llama
    assert m.fast_path_status() is None
    builds = m._plain_view.builds
    m.run(PROMPT)
    assert m._plain_view.builds == builds  # nothing changed: no rebuild
    blk = m.component_wrapper(0, "block")
    orig = blk._original_component
    blk._original_component = _SkipBlock()  # any assignment, not only the weight editor's
    try:
        a, b = _both(lambda: m.run(PROMPT).logits)
        assert torch.equal(a, b) and m._plain_view.builds == builds + 1
    finally:
        blk._original_component = orig


def test_threads_setting(tiny_llama):
    old_setting, old_threads = settings.threads, torch.get_num_threads()
    try:
        settings.threads = 1
        tiny_llama.run(PROMPT)
        assert torch.get_num_threads() == 1
        settings.threads = 0
        with pytest.raises(InputError, match="threads"):
            tiny_llama.run(PROMPT)
    finally:
        settings.threads = old_setting
        torch.set_num_threads(old_threads)


# ---------------------------------------------------------------- the preallocated cache
def test_preallocated_generation_equals_dynamic_and_never_reallocates(tiny):
    m = tiny
    ptrs = []
    g = m.generate(PROMPT, 8, stop_at_eos=False, cache="preallocated",
                   on_step=lambda c, ctx: ptrs.append(c.layer(0)._k.data_ptr()))
    d = m.generate(PROMPT, 8, stop_at_eos=False)
    assert g.new_tokens.tolist() == d.new_tokens.tolist()
    torch.testing.assert_close(g.logits, d.logits, atol=1e-5, rtol=1e-5)
    assert len(set(ptrs)) == 1  # one buffer from prefill to the last step
    lay = g.cache.layer(0)
    assert isinstance(lay, PreallocatedLayer) and lay.capacity == len(g.prompt_tokens) + 8 - 1
    st, n_pos = g.cache_stats[-1], sum(p.numel() for p in g.cache.positions)
    assert n_pos == st.full_tokens * m.info.n_layers * m.info.n_kv_heads  # full at the end: no free slot
    assert st.physical_bytes == st.logical_bytes + n_pos * 8  # the entries plus the int64 position index
    u = m.generate(PROMPT, 8, stop_at_eos=False, use_cache=False)
    torch.testing.assert_close(g.logits, u.logits, atol=1e-4, rtol=1e-4)  # cached == uncached
    with hooked_only():
        h = m.generate(PROMPT, 8, stop_at_eos=False, cache="preallocated")
    assert h.new_tokens.tolist() == g.new_tokens.tolist()
    torch.testing.assert_close(h.logits, g.logits, atol=1e-5, rtol=1e-5)


def test_in_place_compaction_keeps_exactly_the_chosen_entries(tiny_llama):
    m = tiny_llama
    n = m.tokenize(PROMPT)[1][0]
    dyn = m.prefill(PROMPT)
    pre = m.prefill(PROMPT, capacity=n + 10)
    g = torch.Generator().manual_seed(0)
    for l in range(dyn.n_layers):
        small = torch.randperm(n, generator=g)[: n - 3].sort().values  # a few evicted: compaction in place
        ptr = pre.layer(l)._k.data_ptr()
        dyn.keep(l, small)
        pre.keep(l, small)
        assert pre.layer(l)._k.data_ptr() == ptr and pre.layer(l).capacity == n + 10
        assert torch.equal(pre.keys(l), dyn.keys(l)) and torch.equal(pre.values(l), dyn.values(l))
        assert torch.equal(pre.positions[l], dyn.positions[l])
        assert torch.equal(pre.positions[l][0, 0], small)
    # a 4x eviction shrinks the buffers to kept + the 10 remaining tokens
    for l in range(dyn.n_layers):
        idx = torch.arange(0, n - 3, 4)
        dyn.keep(l, idx)
        pre.keep(l, idx)
        assert torch.equal(pre.keys(l), dyn.keys(l)) and torch.equal(pre.positions[l], dyn.positions[l])
        assert pre.layer(l).capacity == len(idx) + 10
    i = m.info
    # the K, V (fp32) and int64 position buffers all shrank to the same capacity
    assert pre.stats().physical_bytes == (len(idx) + 10) * i.n_layers * i.n_kv_heads * (i.d_head * 2 * 4 + 8)
    toks = [5, 17, 42]
    with torch.no_grad():
        a = torch.stack([cached_forward(m, pre, torch.tensor([[t]]))[0, -1] for t in toks])
        b = torch.stack([cached_forward(m, dyn, torch.tensor([[t]]))[0, -1] for t in toks])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert pre.positions[0][0, 0, -3:].tolist() == [n, n + 1, n + 2]


def test_policies_on_preallocated_cache_match_dynamic(tiny_llama):
    m = tiny_llama
    for name, kw in (("streaming_llm", dict(ratio=0.75)), ("key_norm", dict(ratio=0.5, at="both")),
                     ("snapkv", dict(ratio=0.75))):
        d = m.generate(PROMPT, 6, stop_at_eos=False, cache_policy=get_policy(name, **kw))
        p = m.generate(PROMPT, 6, stop_at_eos=False, cache_policy=get_policy(name, **kw), cache="preallocated")
        assert d.new_tokens.tolist() == p.new_tokens.tolist(), name
        torch.testing.assert_close(d.logits, p.logits, atol=1e-5, rtol=1e-5)
        for sd, sp in zip(d.cache_stats, p.cache_stats):
            assert torch.equal(sd.tokens, sp.tokens)
        assert p.cache_stats[-1].physical_bytes <= d.cache_stats[-1].physical_bytes + \
            6 * m.info.n_layers * m.info.n_kv_heads * (m.info.d_head * 2 * 4 + 8)  # K, V and position slots


def test_bad_cache_kind_and_capacity(tiny_llama):
    with pytest.raises(InputError, match="cache must be one of"):
        tiny_llama.generate(PROMPT, 2, cache="paged")
    with pytest.raises(InputError, match="capacity"):
        tiny_llama.prefill(PROMPT, capacity=3)


# ---------------------------------------------------------------- ragged and KIVI layers
def _per_head(n, counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.randperm(n - 1, generator=g)[: c - 1], torch.tensor([n - 1])]).sort().values
            for c in counts]


@pytest.mark.parametrize("capacity", [None, "pre"])
def test_ragged_attention_on_plain_path_equals_reference(tiny_llama, capacity):
    m = tiny_llama
    n = m.tokenize(PROMPT)[1][0]
    full = m.prefill(PROMPT) if capacity is None else m.prefill(PROMPT, capacity=n + 4)
    rag = full.copy()
    for l in range(rag.n_layers):
        rag.keep_heads(l, _per_head(n, [n // 3 + 5 * h + l for h in range(rag.n_kv_heads)], seed=l))
        assert rag.is_ragged(l) and rag.layer(l).room == (0 if capacity is None else 4)
    ref = rag.copy()
    toks = [8, 3, 77, 12]
    ptr = rag.layer(0)._k.data_ptr()
    with torch.no_grad():
        got = torch.stack([cached_forward(m, rag, torch.tensor([[t]]))[0, -1] for t in toks])
        with hooked_only():  # padded view + per-head score masks
            want = torch.stack([cached_forward(m, ref, torch.tensor([[t]]))[0, -1] for t in toks])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert rag.head_counts(0)[0].tolist() == ref.head_counts(0)[0].tolist()
    if capacity is not None:
        assert rag.layer(0)._k.data_ptr() == ptr  # room reserved: written in place
    # the layer's own attention against the independent per-head reference
    lay = rag.layer(1)
    q = torch.randn(1, m.info.n_heads, 1, m.info.d_head)
    z = lay.attend(q, m.info.d_head ** -0.5)  # (1, T, H, d)
    torch.testing.assert_close(z[0].transpose(0, 1), ragged_attention(q[0], lay), atol=1e-5, rtol=1e-5)


def test_ragged_bytes_with_room(tiny_llama):
    m = tiny_llama
    n = m.tokenize(PROMPT)[1][0]
    pre = m.prefill(PROMPT, capacity=n + 6)
    counts = [n // 4 + 3 * h for h in range(pre.n_kv_heads)]
    pre.keep_heads(0, _per_head(n, counts))
    lay = pre.layer(0)
    assert isinstance(lay, RaggedLayer)
    assert lay.stored_tensors()[0].shape[0] == sum(counts) + 6 * len(counts)
    assert torch.equal(lay.packed_keys, RaggedLayer.from_padded(lay.keys, lay.values, pre.positions[0]).packed_keys)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_kivi_attention_on_plain_path_equals_dequantized_reference(tiny_llama, bits):
    m = tiny_llama
    kw = dict(bits=bits, group_size=16, residual=16)
    a = m.generate(PROMPT, 10, stop_at_eos=False, cache_policy=KIVIQuantization(**kw))
    with hooked_only():  # the layer returns the dequantized cache; eager attention over it
        b = m.generate(PROMPT, 10, stop_at_eos=False, cache_policy=KIVIQuantization(**kw))
    assert a.new_tokens.tolist() == b.new_tokens.tolist()
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-5)
    assert [s.physical_bytes for s in a.cache_stats] == [s.physical_bytes for s in b.cache_stats]
    lay = a.cache.layer(1)
    q = torch.randn(1, m.info.n_heads, 1, m.info.d_head)
    z = lay.attend(q, 0.25)
    k, v = lay.keys, lay.values  # dequantized reference
    r = m.info.n_heads // m.info.n_kv_heads
    p = torch.softmax(q @ k.repeat_interleave(r, 1).transpose(-1, -2) * 0.25, -1)
    torch.testing.assert_close(z, (p @ v.repeat_interleave(r, 1)).transpose(1, 2), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- SmolLM2
@pytest.mark.smollm2
def test_plain_path_identical_on_smollm2(smollm2):
    _assert_same_run_and_generation(smollm2, "The capital of France is", n=4)
