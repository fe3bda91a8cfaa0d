"""Generation through the wrapper: cached equals uncached, sampling is seeded, bad input is refused."""
import pytest
import torch

from workbench.errors import InputError

PROMPT = "The capital of France is"


def test_cached_equals_uncached_step_by_step(tiny):
    cached = tiny.generate(PROMPT, 10, stop_at_eos=False)
    fresh = tiny.generate(PROMPT, 10, use_cache=False, stop_at_eos=False)
    assert cached.new_tokens.tolist() == fresh.new_tokens.tolist()
    assert torch.allclose(cached.logits, fresh.logits, atol=1e-4)
    assert len(cached.cache_stats) == 10 and cached.cache.next_position == len(cached.prompt_tokens) + 9


def test_sampling_is_seeded(tiny_llama):
    a = tiny_llama.generate(PROMPT, 12, do_sample=True, seed=7, top_k=50, top_p=0.95, stop_at_eos=False)
    b = tiny_llama.generate(PROMPT, 12, do_sample=True, seed=7, top_k=50, top_p=0.95, stop_at_eos=False)
    c = tiny_llama.generate(PROMPT, 12, do_sample=True, seed=8, top_k=50, top_p=0.95, stop_at_eos=False)
    assert a.new_tokens.tolist() == b.new_tokens.tolist()
    assert a.new_tokens.tolist() != c.new_tokens.tolist()


def test_top_k_one_is_greedy(tiny_llama):
    greedy = tiny_llama.generate(PROMPT, 8, stop_at_eos=False)
    sampled = tiny_llama.generate(PROMPT, 8, do_sample=True, top_k=1, seed=0, stop_at_eos=False)
    assert greedy.new_tokens.tolist() == sampled.new_tokens.tolist()


def test_list_of_prompts(tiny_llama):
    outs = tiny_llama.generate(["ab", "abc"], 3)
    assert [o.prompt for o in outs] == ["ab", "abc"]


def test_on_step_sees_growing_cache(tiny_llama):
    seen = []
    tiny_llama.generate(PROMPT, 4, stop_at_eos=False, on_step=lambda cache, ctx: seen.append((ctx.step, cache.seq_len(0))))
    n0 = tiny_llama.tokenize(PROMPT)[1][0]
    assert seen == [(0, n0), (1, n0 + 1), (2, n0 + 2), (3, n0 + 3)]


@pytest.mark.parametrize("kwargs, word", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 3, "temperature": 0}, "temperature"),
    ({"max_new_tokens": 3, "top_p": 1.5}, "top_p"),
    ({"max_new_tokens": 3, "top_k": 0}, "top_k"),
    ({"max_new_tokens": 3, "cache_policy": object()}, "apply"),
    ({"max_new_tokens": 3, "use_cache": False, "cache_policy": type("P", (), {"apply": lambda s, c, x: None})()},
     "use_cache"),
    ({"max_new_tokens": 10_000}, "context"),
])
def test_bad_generation_arguments(tiny_llama, kwargs, word):
    with pytest.raises(InputError, match=word):
        tiny_llama.generate(PROMPT, **kwargs)


@pytest.mark.smollm2
def test_smollm2_greedy_answer_and_cache_parity(smollm2):
    cached = smollm2.generate(PROMPT, 6)
    fresh = smollm2.generate(PROMPT, 6, use_cache=False)
    assert cached.text.startswith(" Paris")
    assert cached.new_tokens.tolist() == fresh.new_tokens.tolist()
    assert (cached.logits - fresh.logits).abs().max() < 1e-3  # fp32 drift over 30 layers
    assert smollm2.leftover_hooks() == []
