"""Batched sampling: seeded, resumable batch by batch, prompt excluded, input checked."""
import pytest

from workbench.errors import InputError
from workbench.sampling import batch_seed, chat_prompt, sample_texts

PROMPTS = ["The river", "Once upon a time there was", "def f(x):", "Dear friend,", "Q: why?"]


def test_same_seed_same_text_and_resumable(tiny_llama):
    a = sample_texts(tiny_llama, PROMPTS, 12, seed=3, batch_size=2)
    b = sample_texts(tiny_llama, PROMPTS, 12, seed=3, batch_size=2)
    assert a == b and len(a) == len(PROMPTS)
    c = sample_texts(tiny_llama, PROMPTS, 12, seed=4, batch_size=2)
    assert a != c
    # batch 1 (prompts 2, 3) sampled on its own gives the same text as inside the full run
    seen = []
    part = sample_texts(tiny_llama, PROMPTS[2:4], 12, seed=3, batch_size=2, first_batch=1,
                        on_batch=lambda i, t: seen.append(i))
    assert part == a[2:4] and seen == [1]
    assert batch_seed(3, 1) != batch_seed(3, 2)


def test_continuations_exclude_the_prompt(tiny_llama):
    out = sample_texts(tiny_llama, PROMPTS[:2], 10, seed=0, batch_size=2)
    assert all(o and not o.startswith(p) for p, o in zip(PROMPTS[:2], out))
    one = sample_texts(tiny_llama, PROMPTS[:3], 1, seed=0, batch_size=3)  # one new token each
    tok = tiny_llama.tokenizer
    singles = {tok.decode([i]) for i in range(tiny_llama.info.d_vocab)}
    assert all(o in singles for o in one)


def test_chat_prompt_and_bad_input(tiny_llama):
    assert chat_prompt(tiny_llama, "hi") == "hi"  # no chat template: unchanged
    with pytest.raises(InputError, match="non-empty"):
        sample_texts(tiny_llama, [], 4)
    with pytest.raises(InputError, match="non-empty"):
        sample_texts(tiny_llama, ["ok", ""], 4)
    with pytest.raises(InputError, match="max_new_tokens"):
        sample_texts(tiny_llama, ["ok"], 0)
    with pytest.raises(InputError, match="temperature"):
        sample_texts(tiny_llama, ["ok"], 4, temperature=0)
    with pytest.raises(InputError, match="context"):
        sample_texts(tiny_llama, ["ok"], tiny_llama.info.n_ctx)


@pytest.mark.smollm2
def test_chat_prompt_uses_the_template(smollm2):
    p = chat_prompt(smollm2, "Name a colour.")
    assert p.startswith("<|im_start|>") and p.endswith("<|im_start|>assistant\n") and "Name a colour." in p
