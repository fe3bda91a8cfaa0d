"""The efficiency-method protocol: knobs with ranges, the registry, cost models against measured bytes."""
import pytest
import torch

import efficiency as ef
from workbench import InputError

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


def test_every_kv_policy_is_a_listed_method():
    names = set(ef.list_methods()["name"])
    assert set(ef.POLICIES) <= names
    assert set(ef.list_methods("kv-quantization")["name"]) == {"kivi"}
    assert set(ef.list_methods("kv-sparse-coding")["name"]) == {"lexico"}


@pytest.mark.parametrize("name", ["streaming_llm", "snapkv", "h2o", "key_norm", "tova", "adakv", "pyramidkv", "kvzip",
                                  "hashevict", "ems"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75])
def test_eviction_cost_model_equals_measured_bytes(tiny_llama, name, ratio):
    m = tiny_llama
    meth = ef.get_method(name, ratio=ratio)
    cache = m.prefill(PROMPT, cache_policy=meth.cache_policy(m))
    st = cache.stats()
    predicted = meth.cost(m, st.full_tokens)
    # a ragged (per-head) layer keeps its int64 position index padded to its longest head: that padding is
    # the one data-dependent term, so it is added here from the cache (ragged_bytes_formula counts it)
    pad = 8 * sum(p.numel() - p.shape[0] * int(st.tokens[l].sum()) for l, p in enumerate(cache.positions))
    assert predicted.kv_bytes + pad == st.physical_bytes
    assert pad == 0 or name in ("adakv", "kvzip")  # the policies that store layers ragged
    assert predicted.weight_bytes == predicted.baseline_weight_bytes == m.parameter_bytes()
    assert predicted.saving == "real"


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_kivi_cost_model_equals_measured_bytes(tiny_llama, bits):
    m = tiny_llama
    meth = ef.get_method("kivi", bits=bits, group_size=8, residual=8)
    cache = m.prefill(PROMPT, cache_policy=meth.cache_policy(m))
    assert meth.cost(m, cache.stats().full_tokens).kv_bytes == cache.stats().physical_bytes


def test_combined_composes_policies_and_costs(tiny_llama):
    m = tiny_llama
    both = ef.get_method("streaming_llm", ratio=0.5) + ef.get_method("kivi", bits=4, group_size=4, residual=4)
    assert isinstance(both, ef.Combined) and len(both.methods) == 2
    pol = both.cache_policy(m)
    assert "→" in pol.name
    measured = both.measure(m, PROMPT)
    c = both.cost(m, measured.n_tokens)
    assert (c.kv_bytes, c.weight_bytes) == (measured.kv_bytes, measured.weight_bytes)
    # eviction first, then KIVI packs what is left: KIVI's bytes at the kept count, less than either alone
    kept = both.methods[0].kv_tokens_kept(m, measured.n_tokens)
    assert kept < measured.n_tokens and c.kv_bytes == both.methods[1].cost(m, kept).kv_bytes
    assert c.kv_bytes < min(mm.cost(m, measured.n_tokens).kv_bytes for mm in both.methods)
    # the other order: eviction after KIVI stores the kept entries unpacked (what the cache really holds)
    rev = both.methods[1] + both.methods[0]
    assert rev.cost(m, measured.n_tokens).kv_bytes == rev.measure(m, PROMPT).kv_bytes
    assert both.intervention(m) is None and both.label.startswith("streaming_llm(ratio=0.5) + kivi(")


def test_bad_names_and_knobs_fail_clearly():
    with pytest.raises(InputError, match="Did you mean 'snapkv'"):
        ef.get_method("snpkv")
    with pytest.raises(InputError, match=r"ratio=1.0 is out of range; expected float in \[0.0, 1.0\)"):
        ef.get_method("snapkv", ratio=1.0)
    with pytest.raises(InputError, match="unknown knob"):
        ef.get_method("snapkv", bits=2)
    with pytest.raises(InputError, match="one of 2, 4, 8"):
        ef.get_method("kivi", bits=3)
    with pytest.raises(InputError, match="Unknown family"):
        ef.list_methods("quantum")


def test_knob_kinds():
    k = ef.Knob("int", 1, 8)
    k.check("m", "bits", 4)
    for bad in (0, 9, 2.5, True, "4"):
        with pytest.raises(InputError):
            k.check("m", "bits", bad)
    ef.Knob("layers").check("m", "layers", [0, 3])
    with pytest.raises(InputError):
        ef.Knob("layers").check("m", "layers", "0,3")
    ef.Knob("float", 0, 1, optional=True).check("m", "x", None)
    with pytest.raises(InputError):
        ef.Knob("float", 0, 1).check("m", "x", None)


@pytest.mark.parametrize("sparsity", [2, 6])
def test_lexico_cost_model_equals_measured_bytes(tiny_llama, sparsity, tmp_path, monkeypatch):
    from efficiency.kv.lexico_dictionary import LexicoDictionary, user_dir

    m, i = tiny_llama, tiny_llama.info
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))  # a dictionary for the tiny model, found by fingerprint
    g = torch.Generator().manual_seed(0)
    d = torch.randn(2, i.n_layers, i.d_head, 40, generator=g)
    LexicoDictionary(d[0] / d[0].norm(dim=1, keepdim=True), d[1] / d[1].norm(dim=1, keepdim=True), i.name,
                     m.fingerprint).save(user_dir() / "tiny")
    meth = ef.get_method("lexico", sparsity=sparsity, buffer=8, block=4)
    cache = m.prefill(PROMPT, cache_policy=meth.cache_policy(m))
    cost = meth.cost(m, cache.stats().full_tokens)
    assert cost.kv_bytes == cache.stats().physical_bytes < cost.baseline_kv_bytes
    assert cost.weight_bytes == m.parameter_bytes() + 2 * i.n_layers * (i.d_head * 40 + 40 ** 2) * 4
