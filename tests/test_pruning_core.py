"""Skipping blocks, attention and MLPs: identity at zero, exact restore, KV really gone, hooks, pruned copies."""
import pytest
import torch

import workbench as wb
from efficiency.pruning import DropLayers, SkipAttention, block_parameter_bytes
from efficiency.pruning.copy import pruned_copy
from efficiency_helpers import HELD_OUT, deep_tiny_llama, same_params, snapshot
from workbench import InputError, hook_name
from workbench.errors import HookError
from workbench.kv_cache import SkippedLayer

PROMPT = HELD_OUT[0][:90]


@pytest.fixture(scope="module")
def m6():
    return deep_tiny_llama()


def test_dropping_no_layer_is_the_identity(m6):
    ref = m6.run(PROMPT).logits
    with m6.intervene(DropLayers()):
        assert m6.active_edits() == []
        assert torch.equal(m6.run(PROMPT).logits, ref)


def test_skipped_block_passes_the_residual_and_hooks_line_up(m6):
    with m6.intervene(DropLayers(blocks=[2])):
        run = m6.run(PROMPT, capture=["resid_pre", "resid_post"])
        assert torch.equal(run["resid_pre", 2], run["resid_post", 2])
        assert torch.equal(run["resid_post", 1], run["resid_pre", 2])
        assert set(run.layers_of("resid_post")) == set(range(6))  # indices line up with the unmodified model
        assert hook_name("pattern", 2) in wb.silenced_hooks(m6) and hook_name("pattern", 1) not in wb.silenced_hooks(m6)
        with pytest.raises(HookError, match="L2.block is replaced by SkipBlock"):
            m6.run(PROMPT, capture=["mlp_out"], layers=[2])
        with pytest.raises(HookError, match="cannot fire"):
            with m6.session(hooks=[(hook_name("attn_out", 2), lambda x, n: None)]):
                pass
    assert wb.silenced_hooks(m6) == {}


def test_dropped_attention_adds_nothing_and_its_output_hook_still_fires(m6):
    with m6.intervene(DropLayers(attn=[3])):
        run = m6.run(PROMPT, capture=["attn_out", "resid_pre", "resid_mid"], layers=[3])
        assert torch.count_nonzero(run["attn_out", 3]) == 0
        assert torch.equal(run["resid_pre", 3], run["resid_mid", 3])
        with pytest.raises(HookError, match="L3.attn is replaced by SkipAttention"):
            m6.run(PROMPT, capture=["pattern"], layers=[3])


def test_restore_is_bit_exact_also_after_an_exception(m6):
    snap = snapshot(m6)
    ref = m6.run(PROMPT).logits
    with pytest.raises(RuntimeError, match="boom"):
        with m6.intervene(DropLayers(blocks=[1], attn=[2], mlp=[4])):
            assert len(m6.active_edits()) == 3
            raise RuntimeError("boom")
    assert same_params(m6, snap) and m6.active_edits() == [] and wb.silenced_hooks(m6) == {}
    assert torch.equal(m6.run(PROMPT).logits, ref)
    with m6.intervene(DropLayers(blocks=[0])):
        with m6.without_interventions():  # edits suspended: the clean model, hooks no longer silenced
            assert torch.equal(m6.run(PROMPT).logits, ref)
            assert wb.silenced_hooks(m6) == {}
        assert not torch.equal(m6.run(PROMPT).logits, ref)


@pytest.mark.parametrize("drop", [{"blocks": [1, 4]}, {"attn": [0, 2, 5]}, {"blocks": [5]}, {"attn": [0]}])
def test_dropped_attention_holds_no_kv_and_bytes_follow_the_formula(m6, drop):
    i = m6.info
    with m6.intervene(DropLayers(**drop)):
        g = m6.generate(PROMPT, 5, stop_at_eos=False)
        ref = m6.generate(PROMPT, 5, stop_at_eos=False, use_cache=False)
    assert torch.equal(g.new_tokens, ref.new_tokens)
    assert torch.allclose(g.logits, ref.logits, atol=1e-4)  # the cached path matches recomputation
    gone = set(drop.get("blocks", [])) | set(drop.get("attn", []))
    cache = g.cache
    for l in range(i.n_layers):
        assert cache.is_skipped(l) == (l in gone)
        assert (cache.seq_len(l) == 0) == (l in gone)
        # the position index: a skipped layer holds none, a kept layer one int64 per entry and KV head
        assert tuple(cache.positions[l].shape) == (1, i.n_kv_heads, 0 if l in gone else cache.next_position)
    st = cache.stats()
    # K and V (fp32) plus the int64 position of every entry, per kept layer
    per_layer = st.full_tokens * i.n_kv_heads * (i.d_head * 2 * 4 + 8)
    assert st.physical_bytes == per_layer * (i.n_layers - len(gone))


def test_skipped_cache_layer_refuses_entries_and_chunked_feeding_works(m6):
    from efficiency.kv.harness import perplexity

    with m6.intervene(DropLayers(blocks=[2])):
        whole = perplexity(m6, [PROMPT]).perplexity
        chunked = perplexity(m6, [PROMPT], chunk=7).perplexity
        cache = m6.prefill(PROMPT)
    assert whole == pytest.approx(chunked, rel=1e-5)
    assert isinstance(cache.layer(2), SkippedLayer) and cache.stats().tokens[2].sum() == 0
    with pytest.raises(InputError, match="attention was skipped"):
        with m6.session() as s:  # attention back on, cache built without it
            s.forward_cached(cache, torch.tensor([[5]]))


def test_kv_policies_skip_dropped_layers(m6):
    import efficiency as ef

    with m6.intervene(DropLayers(attn=[1])):
        for name in ("snapkv", "streaming_llm"):
            g = m6.generate(PROMPT, 3, cache_policy=ef.get_policy(name, ratio=0.5))
            assert g.cache.is_skipped(1) and g.cache.seq_len(0) < g.cache.stats().full_tokens


def test_bad_drops_fail_clearly(m6):
    with pytest.raises(InputError, match="dropping all 6 layers"):
        with m6.intervene(DropLayers(blocks=range(6))):
            pass
    with pytest.raises(InputError, match="layer 9 is unknown"):
        with m6.intervene(DropLayers(blocks=[9])):
            pass
    with pytest.raises(InputError, match="every layer would be skipped"):
        with m6.intervene(DropLayers(attn=range(6), mlp=range(6))):
            pass
    with pytest.raises(InputError, match="part must be one of"):
        with m6.edit_weights() as ed:
            ed.replace_component(0, "norm", SkipAttention())


def test_pruned_copy_really_holds_fewer_blocks(m6):
    import efficiency as ef

    meth = ef.get_method("drop_blocks", layers=[1, 3])
    small = pruned_copy(m6, meth)
    assert small.info.n_layers == 4
    per_block = block_parameter_bytes(m6)
    assert small.parameter_bytes() == m6.parameter_bytes() - per_block[1] - per_block[3] == meth.copy_weight_bytes(m6)
    with m6.intervene(meth.intervention(m6)):
        inplace = m6.run(PROMPT).logits
    assert torch.allclose(small.run(PROMPT).logits, inplace, atol=1e-5)
    cache = small.prefill(PROMPT)
    assert cache.n_layers == 4
    with pytest.raises(InputError, match="attention or MLP sublayers only"):
        pruned_copy(m6, ef.get_method("drop_attention", layers=[2]))
    with pytest.raises(InputError, match="increasing"):
        wb.pruned_copy(m6, [3, 1])


def test_replace_component_attn_on_gpt2(tiny_gpt2):
    ref = tiny_gpt2.run(PROMPT).logits
    with tiny_gpt2.intervene(DropLayers(attn=[0])):
        run = tiny_gpt2.run(PROMPT, capture=["attn_out"], layers=[0])
        assert torch.count_nonzero(run["attn_out", 0]) == 0
        assert not torch.allclose(run.logits, ref)
        cache = tiny_gpt2.prefill(PROMPT)
        assert cache.is_skipped(0) and not cache.is_skipped(1)
    assert torch.equal(tiny_gpt2.run(PROMPT).logits, ref)
