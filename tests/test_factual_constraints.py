"""Constraint prompts and verifiers (probes.factual.constraints), the SAT probe on them
(probes.factual.sat_constraints) and the "sat" reproduction measurement."""
import unicodedata

import numpy as np
import pytest
import torch

import workbench as wb
from probes.factual import load_facts
from probes.factual.constraints import (Constraint, ConstraintPrompt, answer_country, country_prompts, country_table,
                                        fact_constraint_prompts, first_word, letter_pairs, verify_answer,
                                        verify_country, verify_word, word_prompts)
from probes.factual.sat_constraints import constraint_positions, greedy_completions, run_constraints
from probes.factual.sat_probe import attention_features


def _spans_round_trip(items):
    for it in items:
        for c in it.constraints:
            assert it.prompt[c.span[0]:c.span[1]] == c.text
        starts = [c.span[0] for c in it.constraints]
        assert starts == sorted(starts)  # constraints in prompt order


# ------------------------------------------------------------------------------------------ verifiers
def test_word_verifier(wordnet):
    assert first_word(' "Echo".<|im_end|>') == "echo" and first_word(" 123 ") == ""
    assert verify_word(' "Echo".', start="e")
    assert verify_word(" eating, because", start="e", end="g")  # an inflection of a WordNet lemma
    assert not verify_word(' "Eg".', start="e", end="g")  # not an English word
    assert not verify_word(' "apple"', start="e")  # wrong first letter
    assert not verify_word(" echo", start="e", end="g")  # wrong last letter
    assert not verify_word(' "K".', end="k")  # a single letter is not a word here
    assert not verify_word(' "Bh".', start="b", end="h")  # in WordNet (bohrium), but just the two letters
    assert verify_word(' "Bath".', start="b", end="h") and verify_word(" jut", start="j", end="t")
    assert not verify_word(" xqzvt", start="x")
    assert not verify_word("", start="e")


def test_country_verifier_and_valid_sets():
    assert answer_country(' "The United States".') == "United States" == answer_country(" USA")
    assert answer_country(" Guinea-Bissau is") == "Guinea-Bissau" and answer_country(" Guinea.") == "Guinea"
    assert answer_country(" Nigeria") == "Nigeria" and answer_country(" Niger") == "Niger"
    assert answer_country(" Paris.") is None and answer_country(" Franceland") is None
    items = {it.prompt: it for it in country_prompts(2)}
    fr = items["User: Name a country in Western Europe whose official language is French.\nAssistant: The country is"]
    assert {"France", "Belgium", "Switzerland"} <= fr.valid and "Germany" not in fr.valid
    assert fr.check(" France.") and fr.check(" Belgium, because") and not fr.check(" Germany.")
    assert not fr.check(" Paris.") and not fr.check(" Canada.")  # French-speaking but not in Western Europe
    p = items["User: Name a country in Europe whose capital starts with the letter 'P'.\nAssistant: The country is"]
    assert {"France", "Czech Republic", "Portugal"} & p.valid == {"France", "Czech Republic"}
    assert verify_country(" France", p.valid) and not verify_country(" Portugal", p.valid)
    # every valid answer meets both constraints, recomputed from the table
    table = {r.name: r for r in country_table()}
    for it in items.values():
        assert it.valid
        place = it.constraints[0].text.replace("the Americas", "Americas")
        for name in it.valid:
            r = table[name]
            assert place in (r.region, r.subregion)
            second = it.constraints[1].text
            if "language" in second:
                assert second.rsplit(" ", 1)[1] in r.languages
            else:
                first = unicodedata.normalize("NFKD", r.capital[0]).encode("ascii", "ignore").decode().upper()
                assert first == second[-2], (name, r.capital, second)


def test_fact_answer_verifier():
    assert verify_answer(" Paris.<|im_end|>", " Paris") and verify_answer(" Bogotá.", " Bogota")
    assert not verify_answer(" Parisian food", " Paris") and not verify_answer(" The city of Paris", " Paris")
    facts = load_facts().sample(2, seed=0)
    items = fact_constraint_prompts(facts)
    assert len(items) == len(facts) and all(len(it.constraints) == 1 for it in items)
    _spans_round_trip(items)
    assert [it.constraints[0].text for it in items] == [f.subject for f in facts]
    assert all(it.check(f.answer + ".") and not it.check(" nothing") for it, f in zip(items, facts))


# ------------------------------------------------------------------------------------------ datasets
def test_word_prompts(wordnet):
    pairs = letter_pairs()
    one, two = word_prompts(1), word_prompts(2)
    assert len(one) == len({a for a, _ in pairs}) + len({b for _, b in pairs}) and len(two) == len(pairs)
    _spans_round_trip(one + two)
    assert all(len(it.constraints) == 1 for it in one) and all(len(it.constraints) == 2 for it in two)
    it = next(x for x in two if x.constraints[0].text.endswith("'e'") and x.constraints[1].text.endswith("'g'"))
    assert it.prompt == ("User: Tell me a word that starts with the letter 'e' and ends with the letter 'g'.\n"
                         "Assistant: The word is")
    assert it.check(' "Evening".') and not it.check(' "Echo".') and not it.check(' "Eg".')
    s1, s2 = word_prompts(2, n=10, seed=3), word_prompts(2, n=10, seed=3)
    assert len(s1) == 10 and [x.prompt for x in s1] == [x.prompt for x in s2]
    assert [x.prompt for x in word_prompts(2, n=10, seed=4)] != [x.prompt for x in s1]
    for x in s1:  # each sampled pair has at least 20 WordNet words
        a, b = x.constraints[0].text[-2], x.constraints[1].text[-2]
        assert pairs[a, b] >= 20


def test_country_prompts():
    one, two = country_prompts(1), country_prompts(2)
    _spans_round_trip(one + two)
    assert all(len(it.constraints) == 1 and it.valid for it in one)
    assert all(len(it.constraints) == 2 and it.valid for it in two)
    assert len(country_prompts(2, n=25)) == 25 and len({it.prompt for it in two}) == len(two)
    europe = next(it for it in one if it.constraints[0].text == "Europe")
    assert europe.check(" Poland.") and not europe.check(" Japan.")


def test_bad_input():
    with pytest.raises(wb.InputError, match="reads"):
        ConstraintPrompt("User: hi there", (Constraint("there", (0, 5)),), bool)
    with pytest.raises(wb.InputError, match="at least one constraint"):
        ConstraintPrompt("User: hi", (), bool)
    with pytest.raises(wb.InputError, match="one- or two-constraint"):
        country_prompts(3)
    with pytest.raises(wb.InputError, match="places"):
        country_prompts(1, places="planet")


# ------------------------------------------------------------------------------------------ the probe pipeline
def test_run_constraints_on_a_tiny_model(tiny_llama):
    items = country_prompts(2, n=4)
    run = run_constraints(tiny_llama, items, max_new_tokens=3)
    L, H = tiny_llama.info.n_layers, tiny_llama.info.n_heads
    assert run.features.shape == (4, 2 * L * H) and run.n_constraints == 2
    assert ((run.features >= 0) & (run.features <= 1 + 1e-6)).all()
    assert run.labels.shape == (4,) and set(run.labels.tolist()) <= {0, 1}
    assert run.labels.tolist() == [int(it.check(t)) for it, t in zip(items, run.completions.texts)]
    # the second block is the attention to the second constraint alone
    pos = [constraint_positions(tiny_llama, it) for it in items]
    second, last = attention_features(tiny_llama, [it.prompt for it in items], [p[1] for p in pos])
    assert np.allclose(run.features[:, L * H:], second, atol=1e-6)
    c = run.completions
    assert (c.first_token == last.argmax(-1).numpy()).all()  # greedy: the first token is the top-1
    assert np.allclose(c.first_prob, last.softmax(-1).max(-1).values.numpy(), atol=1e-4)
    assert (c.mean_logprob <= 0).all() and ((c.n_tokens >= 1) & (c.n_tokens <= 3)).all()
    with pytest.raises(wb.InputError, match="same number of constraints"):
        run_constraints(tiny_llama, country_prompts(1, n=1) + country_prompts(2, n=1))
    with pytest.raises(wb.InputError, match="ConstraintPrompt"):
        run_constraints(tiny_llama, [("prompt", "subject")])


def test_greedy_completion_matches_generate(tiny_llama):
    p = "User: Name a country in Asia.\nAssistant: The country is"
    c = greedy_completions(tiny_llama, [p], 4)
    g = tiny_llama.generate(p, 4)
    lp = torch.log_softmax(g.logits.float(), -1)[torch.arange(len(g.new_tokens)), g.new_tokens]
    assert abs(c.mean_logprob[0] - float(lp.mean())) < 1e-6 and c.first_token[0] == int(g.new_tokens[0])


# ------------------------------------------------------------------------------------------ the measurement
class _FakeRun:
    """A ConstraintRun stand-in with planted features: the label is whether feature 3 of the last constraint is high."""

    def __init__(self, n=120, k=2, layers=(0, 1), heads=4, seed=0):
        rng = np.random.default_rng(seed)
        self.features = rng.uniform(0, 1, (n, k * len(layers) * heads))
        self.labels = (self.features[:, (k - 1) * len(layers) * heads + 3] > 0.5).astype(int)
        self.layers, self.n_heads, self.n_constraints = list(layers), heads, k
        self.items = country_prompts(k, n=n)
        from probes.factual.sat_constraints import Completions
        self.completions = Completions([" x"] * n, np.zeros(n, int), rng.uniform(size=n), -rng.uniform(size=n),
                                       np.ones(n, int))


def test_sat_numbers_and_the_claims_read_them():
    from lab.reproductions.measure import MeasureSizes, _sat_numbers
    from lab.reproductions.papers.attention_satisfies import CLAIMS

    sizes = MeasureSizes(n_boot=50)
    run = _FakeRun()
    out = _sat_numbers(run, run.labels, "planted", "fake", sizes)
    assert out["auroc_probe"] > 0.95 and out["auroc_probe_ci"][0] > 0.9 and 0.3 < out["auroc_confidence"] < 0.7
    assert out["top_heads"][0] == {"constraint": 1, "layer": 0, "head": 3, "weight": out["top_heads"][0]["weight"]}
    assert "skipped" not in out and out["n_prompts"] == 120
    few = _sat_numbers(run, np.r_[np.ones(3), np.zeros(117)], "too few correct", "fake", sizes)
    assert "skipped" in few and "auroc_probe" not in few
    run1 = _FakeRun(k=1)
    one = _sat_numbers(run1, run1.labels, "planted", "fake", sizes)
    sat = {"facts_full": one, "words_1": one, "countries_1": one, "words_2": out, "countries_2": out}
    rows = {c.key: c.evaluate({"reproductions": {"sat": sat}}) for c in CLAIMS}
    assert set(rows) == {"factual.sat_probe", "factual.sat_probe_two_constraints"}
    # the probe beats a random confidence by far: reproduced, not "not yet measured"
    assert all(r.verdict == "reproduced" for r in rows.values()), [r.reason for r in rows.values()]
    sat["countries_2"] = few  # skipped: no AUROC, so no verdict
    assert CLAIMS[1].evaluate({"reproductions": {"sat": sat}}).verdict == "not yet measured"


def test_measure_sat_at_tiny_sizes(tiny_llama, wordnet):
    from lab.reproductions.measure import MeasureSizes, run_measure

    sizes = MeasureSizes(sat_prompts_per_relation=1, sat_words_1=3, sat_words_2=3, sat_countries_1=3,
                         sat_countries_2=3, sat_max_new_tokens=2, n_boot=10)
    sat = run_measure(tiny_llama, ["sat"], sizes)["sat"]
    for key in ("facts_first_token", "facts_full", "words_1", "words_2", "countries_1", "countries_2"):
        d = sat[key]
        assert d["n_prompts"] == (5 if key.startswith("facts") else 3) and 0 <= d["accuracy"] <= 1
        assert "skipped" in d  # a random tiny model on 3 prompts: too few of one class, reported, not raised
    assert sat["words_2"]["n_constraints"] == 2 and sat["facts_full"]["n_constraints"] == 1


@pytest.mark.smollm2
def test_smollm2_answers_one_constraint_country_prompts(smollm2):
    items = [it for it in country_prompts(1) if it.constraints[0].text in ("Europe", "Eastern Asia", "Western Europe")]
    run = run_constraints(smollm2, items)
    assert run.labels.sum() >= 2, run.completions.texts  # "Germany.", "China." ... (measured: all correct)
