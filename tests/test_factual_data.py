"""The bundled factual-recall prompts (probes.factual.data): schema, spans, first-token rule, errors."""
import json

import pytest

from probes.factual.data import (FactPrompt, FactSet, accuracy_table, answer_token, candidate_tokens,
                                 evaluate_facts, load_facts, make_fact, token_positions)
from workbench.errors import InputError


@pytest.fixture(scope="module")
def facts():
    return load_facts()


def test_bundled_set_size_relations_and_meta(facts):
    assert len(facts) >= 300
    rels = facts.relations()
    assert len(rels) >= 4
    for r in rels:
        group = facts.by_relation(r)
        assert len(group) >= 40
        cands = group[0].candidates
        assert len(set(cands)) >= 2
        assert all(f.candidates == cands for f in group)  # one candidate set per relation
        assert all(f.answer in cands and f.answer.startswith(" ") for f in group)
    ids = [f.id for f in facts]
    assert len(ids) == len(set(ids))
    meta = facts.meta
    assert meta["version"] == "v1" and meta["n_prompts"] == len(facts)
    acc = meta["accuracy"]["per_relation"]
    assert set(rels) <= set(acc) and 0 < acc["all"]["acc_vocab_top1"] <= 1


def test_spans_point_at_subject_and_relation(facts):
    for f in facts:
        a, b = f.subject_span
        assert f.prompt[a:b] == f.subject
        a, b = f.relation_span
        assert f.prompt[a:b] and f.prompt[a:b] in f.prompt.split("\n")[-1]
        assert f.prompt.startswith("User: ") and "\nAssistant: " in f.prompt and not f.prompt.endswith(" ")


def test_jsonl_round_trip(facts, tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps(f.to_json()) + "\n" for f in facts[:5]))
    back = load_facts(path)
    assert list(back) == list(facts[:5])
    assert back.meta == {}


@pytest.mark.smollm2
def test_first_tokens_distinct_within_relation(smollm2, facts):
    for r in facts.relations():
        f = facts.by_relation(r)[0]
        ans, others = candidate_tokens(smollm2, f)
        assert len(others) == len(f.candidates) - 1 and ans not in others  # no collision
        assert answer_token(smollm2, f) == smollm2.tokenizer(f.answer, add_special_tokens=False)["input_ids"][0]
    # two candidates sharing a first token cannot be told apart by the first-token rule: clear error
    clash = make_fact("capital", "France", "The capital city of France is", " Paris", (" Paris", " Parisian", " Rome"),
                      "capital city")
    with pytest.raises(InputError, match="same token"):
        candidate_tokens(smollm2, clash)


def test_token_positions_cover_both_mentions(tiny_llama):
    f = make_fact("capital", "France", "User: What is the capital city of France?\nAssistant: The capital city of France is",
                  " Paris", (" Paris", " Rome"), "capital city")
    # byte-level tokenizer: one token per character
    subj, rel = token_positions(tiny_llama, f)
    p = f.prompt
    starts = [i for i in range(len(p)) if p.startswith("France", i)]
    assert subj == [i + k for i in starts for k in range(6)]
    assert len(rel) == 2 * len("capital city")
    subj1, rel1 = token_positions(tiny_llama, f, all_mentions=False)
    assert subj1 == list(range(f.subject_span[0], f.subject_span[1]))
    assert rel1 == list(range(f.relation_span[0], f.relation_span[1]))


def test_filters_and_sample(facts):
    r = facts.relations()[0]
    assert all(f.relation == r for f in facts.filter(relation=r))
    s = facts.sample(3, seed=1)
    assert len(s) == 3 * len(facts.relations())
    assert [f.id for f in s] == [f.id for f in facts.sample(3, seed=1)]
    assert "prompts" in repr(facts) and "<b>" in facts._repr_html_()


def test_bad_input(tiny_llama, tmp_path):
    with pytest.raises(InputError, match="empty"):
        FactSet([])
    with pytest.raises(InputError, match="empty"):
        FactSet([make_fact("r", "a", "a b", " x", (" x", " y"), "b")]).filter(relation="other")
    with pytest.raises(InputError, match="not found in the prompt"):
        make_fact("capital", "Spain", "The capital city of France is", " Paris", (" Paris", " Rome"), "capital city")
    with pytest.raises(InputError, match="only one candidate"):
        make_fact("capital", "France", "The capital city of France is", " Paris", (" Paris",), "capital city")
    with pytest.raises(InputError, match="not among"):
        make_fact("capital", "France", "The capital city of France is", " Lyon", (" Paris", " Rome"), "capital city")
    with pytest.raises(InputError, match="not found at"):
        FactPrompt("x", "capital", "Spain", "The capital city of France is", " Paris", (" Paris", " Rome"), (20, 25), (4, 16))
    with pytest.raises(InputError, match="No facts file"):
        load_facts(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="holds no prompts"):
        load_facts(empty)
    f = make_fact("capital", "France", "The capital city of France is", " Paris", (" Paris", " Rome"), "capital city")
    with pytest.raises(InputError, match="whitespace"):  # byte tokenizer: the first token of " Paris" is " "
        answer_token(tiny_llama, f)
    with pytest.raises(InputError, match="Unknown relation"):
        FactSet([f]).by_relation("currency")


P = "User: What is the capital city of France?\nAssistant: The capital city of France is"
ARGS = ("capital", "France", P, " Paris", (" Paris", " Rome"))


@pytest.mark.parametrize("spans, match", [
    (((73, 73), (57, 69)), "subject span \\(73, 73\\) is empty"),
    (((73, 79), (65, 65)), "relation span \\(65, 65\\) is empty"),
    (((73, 79), (73, 79)), "relation span \\(73, 79\\) is the subject span"),
    (((73, 79), (74, 77)), "inside the subject span"),
    (((73, 79), (0, 4)), "token 0, the attention sink"),
    (((73, 79), (57, 500)), "lies outside the prompt"),
])
def test_bad_spans_get_clear_errors(spans, match):
    s_span, r_span = spans
    assert P[73:79] == "France" and P[57:69] == "capital city"
    FactPrompt("capital/France", *ARGS, (73, 79), (57, 69))  # the good spans pass
    with pytest.raises(InputError, match=match):
        FactPrompt("capital/France", *ARGS, s_span, r_span)


def test_mentions_are_whole_words(tiny_llama):
    # "a" occurs inside "What", "capital", "Assistant" but never as a word: refused, naming a word it hides in
    with pytest.raises(InputError, match="only inside other words"):
        make_fact("capital", "a", P, " Paris", (" Paris", " Rome"), "capital city")
    with pytest.raises(InputError, match="only inside other words"):
        make_fact("capital", "France", P, " Paris", (" Paris", " Rome"), "capit")
    with pytest.raises(InputError, match="empty"):
        make_fact("capital", "", P, " Paris", (" Paris", " Rome"), "capital city")
    # a whole-word subject is found, and all_mentions counts only its whole-word occurrences
    f = make_fact("r", "is", "User: Where is it? This island is", " x", (" x", " y"), "Where")
    assert f.subject_span == (31, 33)  # the last whole word "is", not the "is" inside "This" / "island"
    subj, _ = token_positions(tiny_llama, f)  # byte tokenizer: one token per character
    assert subj == [12, 13, 31]  # the last token (position 32) is its own group


def test_token_level_checks(tiny_llama):
    # the relation text also occurs at the very start (token 0, the sink): refused with all mentions ...
    f = make_fact("r", "France", "capital? The capital of France is", " x", (" x", " y"), "capital")
    with pytest.raises(InputError, match="covers token 0"):
        token_positions(tiny_llama, f)
    subj, rel = token_positions(tiny_llama, f, all_mentions=False)  # ... fine with the span only
    assert rel == list(range(13, 20)) and 0 not in rel
    # a subject made only of the last token leaves no subject token
    g = FactPrompt("r/x", "r", "x", "User: a x", " y", (" y", " z"), (8, 9), (6, 7))
    with pytest.raises(InputError, match="other than the last one"):
        token_positions(tiny_llama, g)


@pytest.mark.smollm2
def test_accuracy_on_smollm2_matches_meta(smollm2, facts):
    few = facts.sample(2, seed=0)
    ev = evaluate_facts(smollm2, few)
    assert len(ev) == len(few) and set(ev["relation"]) == set(facts.relations())
    assert ((ev["rank_vocab"] == 0) == ev["correct"]).all()
    assert (ev["rank_candidates"] <= ev["rank_vocab"]).all()
    table = accuracy_table(ev)
    assert table.loc["all", "n"] == len(few)
    # the stored per-prompt format reaches the documented accuracy on the easy prompts
    france = facts.filter(ids=["capital/France"])
    assert evaluate_facts(smollm2, france)["top1"].iloc[0] == " Paris"


@pytest.mark.smollm2
def test_build_script_reproduces_the_bundled_file(smollm2, facts):
    """scripts/build_facts.py (tokenizer only, no evaluation) rebuilds exactly the bundled prompts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "build_facts.py"
    spec = importlib.util.spec_from_file_location("build_facts", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    built, report = mod.build(smollm2.tokenizer)
    assert built == list(facts)
    assert {r: v["n_prompts"] for r, v in report.items()} == {r: len(facts.by_relation(r)) for r in facts.relations()}
