"""Compress once, ask many (workbench.questions) and RoPE re-rotation of kept keys (workbench.rope)."""
import pytest
import torch

import workbench as wb
from efficiency import get_policy
from efficiency.kv import StreamingLLM
from workbench.questions import compress_context
from workbench.rope import contiguous_positions, rotate_keys

CONTEXT = ("The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door. "
           "Meanwhile, in the kitchen, the kettle began to whistle. The secret word is plum.")
QUESTIONS = [" What is the secret word?", " Where does the cat sleep?", " What began to whistle?"]


@pytest.mark.parametrize("policy", [None, "snapkv", "streaming_llm", "adakv", "key_norm"])
@pytest.mark.parametrize("reuse", ["copy", "truncate"])
def test_two_questions_in_a_row_equal_each_alone(tiny_llama, policy, reuse):
    make = (lambda: None) if policy is None else (lambda: get_policy(policy, ratio=0.5))
    shared = compress_context(tiny_llama, CONTEXT, make())
    before = [(shared.cache.keys(l).clone(), shared.cache.positions[l].clone()) for l in range(shared.cache.n_layers)]
    bytes_before = shared.cache.stats().physical_bytes
    in_a_row = shared.ask_many(QUESTIONS, max_new_tokens=5, reuse=reuse, stop_at_eos=False)
    for q, a in zip(QUESTIONS, in_a_row):
        alone = compress_context(tiny_llama, CONTEXT, make()).ask(q, max_new_tokens=5, stop_at_eos=False)
        assert torch.equal(a.new_tokens, alone.new_tokens) and torch.equal(a.logits, alone.logits), (policy, reuse, q)
        assert a.start_position == shared.n_tokens
    # the compressed context is exactly as it was
    assert shared.cache.next_position == shared.n_tokens and shared.cache.stats().physical_bytes == bytes_before
    for l, (k, p) in enumerate(before):
        assert torch.equal(shared.cache.keys(l), k) and torch.equal(shared.cache.positions[l], p)
    assert len(shared.to_frame()) == 3 and "3 question(s)" in repr(shared)


def test_full_cache_answer_equals_generate_on_context_plus_question(tiny_llama):
    ctx = compress_context(tiny_llama, CONTEXT)
    q_ids = tiny_llama.tokenizer(QUESTIONS[0], add_special_tokens=False)["input_ids"]
    a = ctx.ask(QUESTIONS[0], max_new_tokens=6, stop_at_eos=False)
    g = tiny_llama.generate(torch.cat([ctx.context_tokens, torch.tensor(q_ids)]), 6, stop_at_eos=False)
    assert torch.equal(a.new_tokens, g.new_tokens)
    torch.testing.assert_close(a.logits, g.logits, atol=1e-4, rtol=1e-4)


def test_query_agnostic_policy_scores_from_the_context_only(tiny_llama):
    """SnapKV's observation window is the end of the context: the kept set does not depend on the question."""
    ctx = compress_context(tiny_llama, CONTEXT, get_policy("snapkv", ratio=0.5, window=4))
    direct = tiny_llama.prefill(CONTEXT, cache_policy=get_policy("snapkv", ratio=0.5, window=4))
    for l in range(ctx.cache.n_layers):
        assert torch.equal(ctx.cache.positions[l], direct.positions[l])


def test_copy_holds_more_than_truncate(tiny_llama):
    ctx = compress_context(tiny_llama, CONTEXT, get_policy("streaming_llm", ratio=0.5))
    a = ctx.ask(QUESTIONS[0], max_new_tokens=4, reuse="copy", stop_at_eos=False)
    b = ctx.ask(QUESTIONS[0], max_new_tokens=4, reuse="truncate", stop_at_eos=False)
    per_entry = tiny_llama.info.d_head * 2 * 4 + 8
    n_new = len(tiny_llama.tokenizer(QUESTIONS[0], add_special_tokens=False)["input_ids"]) + 3
    i = tiny_llama.info
    assert b.extra_bytes == n_new * i.n_layers * i.n_kv_heads * per_entry
    assert a.extra_bytes == ctx.stats.physical_bytes + b.extra_bytes


def test_truncate_refuses_packed_layers_copy_works(tiny_llama):
    ctx = compress_context(tiny_llama, CONTEXT, get_policy("kivi", bits=4, group_size=8, residual=8))
    with pytest.raises(wb.InputError, match="reuse='copy'"):
        ctx.ask(QUESTIONS[0], reuse="truncate")
    a1 = ctx.ask(QUESTIONS[0], max_new_tokens=3, stop_at_eos=False)
    a2 = ctx.ask(QUESTIONS[0], max_new_tokens=3, stop_at_eos=False)
    assert torch.equal(a1.logits, a2.logits)


def test_bad_input(tiny_llama):
    ctx = compress_context(tiny_llama, CONTEXT)
    with pytest.raises(wb.InputError, match="reuse"):
        ctx.ask(QUESTIONS[0], reuse="restore")
    with pytest.raises(wb.InputError, match="max_new_tokens"):
        ctx.ask(QUESTIONS[0], max_new_tokens=0)
    with pytest.raises(wb.InputError, match="question"):
        ctx.ask("")
    with pytest.raises(wb.InputError, match="exceeds"):
        ctx.ask(QUESTIONS[0], max_new_tokens=tiny_llama.info.n_ctx)


# ---------------------------------------------------------------------------------------------- re-rotation
def test_rotate_keys_moves_keys_to_another_position(tiny_llama):
    """Keys prefilled from position s equal the keys prefilled from 0, re-rotated by +s."""
    m, s = tiny_llama, 37
    ids, _ = m.tokenize(CONTEXT[:60])
    a = wb.KVCache.empty(m)
    b = wb.KVCache.empty(m)
    b.next_position = s
    with m.session() as sess:
        sess.forward_cached(a, ids)
        sess.forward_cached(b, ids)
    inv_freq = m.rope_inv_freq()[0]
    for l in range(a.n_layers):
        delta = torch.full(a.positions[l].shape, s)
        torch.testing.assert_close(rotate_keys(a.keys(l), delta, inv_freq), b.keys(l), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(a.values(l), b.values(l), atol=2e-5, rtol=1e-4)
        back = rotate_keys(b.keys(l), -delta, inv_freq)
        torch.testing.assert_close(back, a.keys(l), atol=2e-5, rtol=1e-4)


def test_rerotation_of_a_contiguous_tail_changes_nothing_but_positions(tiny_llama):
    """Keep only the newest n entries: re-rotation shifts them and the question by the same amount, so
    (RoPE being relative) the answer's logits are unchanged, while positions become 0..n-1."""
    n = 30
    plain = compress_context(tiny_llama, CONTEXT, StreamingLLM(budget=n, sinks=0))
    rot = compress_context(tiny_llama, CONTEXT, StreamingLLM(budget=n, sinks=0), rerotate=True)
    assert rot.cache.next_position == n and rot.rerotated
    for l in range(rot.cache.n_layers):
        assert rot.cache.positions[l][0, 0].tolist() == list(range(n))
    a = plain.ask(QUESTIONS[0], max_new_tokens=4, stop_at_eos=False)
    b = rot.ask(QUESTIONS[0], max_new_tokens=4, stop_at_eos=False)
    assert b.start_position == n and a.start_position == plain.n_tokens
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(a.new_tokens, b.new_tokens)


def test_rerotation_with_sinks_renumbers_and_changes_distances(tiny_llama):
    rot = compress_context(tiny_llama, CONTEXT, StreamingLLM(budget=20, sinks=4), rerotate=True)
    assert rot.cache.next_position == 20
    assert rot.cache.positions[0][0, 0].tolist() == list(range(20))
    full = compress_context(tiny_llama, CONTEXT, rerotate=True)  # nothing evicted: identity
    ref = compress_context(tiny_llama, CONTEXT)
    for l in range(full.cache.n_layers):
        assert torch.equal(full.cache.keys(l), ref.cache.keys(l))


def test_contiguous_positions_right_aligns_ragged_heads():
    pos = [torch.tensor([[[-1, -1, 3, 9], [0, 2, 5, 7]]]), torch.tensor([[[1, 4], [6, 8]]])]
    new, top = contiguous_positions(pos)
    assert top == 4
    assert new[0].tolist() == [[[-1, -1, 2, 3], [0, 1, 2, 3]]] and new[1].tolist() == [[[2, 3], [2, 3]]]


def test_rerotation_of_ragged_cache_and_refusals(tiny_llama, tiny_gpt2):
    ctx = compress_context(tiny_llama, CONTEXT, get_policy("adakv", ratio=0.6), rerotate=True)
    assert any(ctx.cache.is_ragged(l) for l in range(ctx.cache.n_layers))
    a = ctx.ask(QUESTIONS[1], max_new_tokens=3, stop_at_eos=False)
    assert torch.isfinite(a.logits).all()
    with pytest.raises(wb.InputError, match="rotary"):
        compress_context(tiny_gpt2, CONTEXT, rerotate=True)
    with pytest.raises(wb.InputError, match="full-precision"):
        compress_context(tiny_llama, CONTEXT, get_policy("kivi", bits=4, group_size=8, residual=8), rerotate=True)


def test_compressed_context_result(tiny_llama):
    ctx = compress_context(tiny_llama, CONTEXT, get_policy("streaming_llm", ratio=0.5))
    ctx.ask(QUESTIONS[0], max_new_tokens=2)
    fig = ctx.figure()
    assert fig.data[0].z.shape[0] == tiny_llama.info.n_layers
    assert "CompressedContext(streaming_llm" in repr(ctx) and "<table" in ctx._repr_html_()
    assert "Answer(" in repr(ctx.answers[0]) and len(ctx.answers[0].to_frame()) >= 1


@pytest.mark.smollm2
def test_query_agnostic_passkey_and_lexico_on_smollm2(smollm2):
    """KVzip at 4x keeps a 300-token passkey when the question comes after compression; the shipped Lexico
    dictionary is SmolLM2's and its cache holds exactly the formula's bytes."""
    from efficiency import sweep
    from efficiency.kv import LexicoCompression, LexicoDictionary, lexico_bytes_formula
    from workbench.texts.tasks import passkey_prompts, split_ids

    s = passkey_prompts(smollm2, 1, 300, depth=0.4, seed=11)[0]
    df = sweep(smollm2, [s], ["kvzip"], ratios=(0.75,), query_aware=False).to_frame()
    print(df[["policy", "generated", "kept_fraction"]].to_string())
    assert df.correct.all()  # full cache and KVzip
    d = LexicoDictionary.for_model(smollm2)
    assert d.fingerprint == smollm2.fingerprint and d.n_layers == smollm2.info.n_layers
    ctx_ids, q_ids = split_ids(smollm2, s)
    c = compress_context(smollm2, ctx_ids, LexicoCompression(sparsity=8))
    i = smollm2.info
    assert c.stats.physical_bytes == lexico_bytes_formula(c.n_tokens, n_layers=i.n_layers, n_kv_heads=i.n_kv_heads,
                                                          d_head=i.d_head, sparsity=8)
    # the newest 128 tokens stay in full precision (Lexico's buffer), the rest as 8-sparse fp16 codes: at this
    # length about 0.52 of the K/V bytes plus the position index
    assert c.stats.physical_bytes < 0.65 * c.full_stats.physical_bytes


def test_task_runner_query_switch(tiny_llama):
    """score_passkey with a policy: query-aware equals generate with it, query-agnostic equals compress + ask."""
    from workbench.texts.tasks import passkey_prompts, score_passkey, split_ids

    s = passkey_prompts(tiny_llama, 2, 230, seed=4)
    pol = get_policy("snapkv", ratio=0.5, window=4)
    aware = score_passkey(tiny_llama, s, cache_policy=pol, query_aware=True)
    agn = score_passkey(tiny_llama, s, cache_policy=pol, query_aware=False)
    full = score_passkey(tiny_llama, s)
    full_agn = score_passkey(tiny_llama, s, query_aware=False)  # full cache, asked after: the same text
    assert "query-aware, snapkv" in repr(aware) and "query-agnostic, snapkv" in repr(agn)
    for i, x in enumerate(s):
        assert aware.generated[i] == tiny_llama.generate(x.prompt, len(x.answer_token_ids), cache_policy=pol).text
        ctx_ids, q_ids = split_ids(tiny_llama, x)
        assert agn.generated[i] == compress_context(tiny_llama, ctx_ids, pol).ask(q_ids, len(x.answer_token_ids)).text
    torch.testing.assert_close(full_agn.answer_logprob, full.answer_logprob, atol=1e-4, rtol=1e-4)
    assert full_agn.generated == full.generated
