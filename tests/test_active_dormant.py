"""Active/dormant heads: labels, sink mass, ΔCE under ablation, bundled domains, Q/K disruption report."""
import numpy as np
import pytest
import torch.nn.functional as F

import workbench as wb
from interventions import HeadAblation
from probes.sinks.active_dormant import ActiveDormantReport, active_dormant, label_head, token_cross_entropy
from workbench.texts import DOMAINS, load_domain

DOMS = {
    "prose": ["The river was low that autumn and the stones were dry.", "Bread needs flour, water and time."],
    "code": ["def f(x):\n    return x * 2\n", "for i in range(10):\n    print(i)"],
}


# ---------------------------------------------------------------------------------- labelling rule
@pytest.mark.parametrize("mass,dce,expected", [
    (0.92, -0.002, "dormant"),   # sinks, ablation barely matters
    (0.92, 0.004, "dormant"),
    (0.80, -0.013, "mixed"),     # sinks but ablation changes the loss by more than the threshold
    (0.46, 0.036, "active"),     # does not sink, ablation hurts
    (0.70, 0.005, "active"),     # boundaries: mass 0.7 is not > 0.7; ΔCE 0.005 counts as hurting
    (0.71, 0.005, "mixed"),
    (0.30, -0.02, "mixed"),      # does not sink, ablation helps
    (0.30, 0.001, "mixed"),      # does not sink, does not matter
    (float("nan"), 0.1, "mixed"),
])
def test_label_rule(mass, dce, expected):
    assert label_head(mass, dce) == expected


def test_label_thresholds_are_parameters():
    assert label_head(0.6, 0.01, dormant_mass=0.5, dormant_dce=0.02) == "dormant"
    assert label_head(0.4, 0.03, dormant_mass=0.5, dormant_dce=0.02) == "active"


def test_report_labels_use_its_numbers():
    r = ActiveDormantReport("toy", [(0, 0), (1, 2)], ["a", "b"], np.array([[0.9, 0.2], [0.5, 0.95]]),
                            np.array([[0.001, 0.05], [-0.01, 0.0]]), np.zeros(2), np.ones(2, dtype=int), [1, 1],
                            4, 0.7, 0.005, {"a": float("nan"), "b": float("nan")})
    assert r.labels.tolist() == [["dormant", "active"], ["mixed", "dormant"]]
    df = r.to_frame()
    assert list(df["name"]) == ["L0H0", "L0H0", "L1H2", "L1H2"] and list(df["label"]) == ["dormant", "active", "mixed", "dormant"]


# ---------------------------------------------------------------------------------- numbers on tiny
def test_cross_entropy_matches_torch(tiny_llama):
    run = tiny_llama.run(DOMS["prose"])
    total, count = token_cross_entropy(run.logits, run.tokens, run.lengths)
    ref = [F.cross_entropy(run.logits[b, : n - 1], run.tokens[b, 1:n], reduction="sum") for b, n in enumerate(run.lengths)]
    assert count == sum(n - 1 for n in run.lengths)
    assert total == pytest.approx(float(sum(ref)), rel=1e-5)


def test_active_dormant_numbers_match_manual(tiny):
    heads = [(0, 1), (1, 3)]
    r = active_dormant(tiny, DOMS, heads=heads, skip_queries=4)
    assert r.sink_mass.shape == r.dce.shape == (2, 2) and r.domains == ["prose", "code"]
    assert np.isfinite(r.sink_mass).all() and np.isfinite(r.dce).all()
    assert ((r.sink_mass >= 0) & (r.sink_mass <= 1)).all()
    for j, texts in enumerate(DOMS.values()):
        # sink mass: mean over queries q >= 4 of A[q, 0] per text (full patterns, one text at a time), mean over texts
        for i, (l, h) in enumerate(heads):
            per_text = [float(tiny.run(t, capture=["pattern"], layers=[l])["pattern", l][0, h, 4:, 0].mean()) for t in texts]
            assert r.sink_mass[i, j] == pytest.approx(np.mean(per_text), abs=1e-5)
        # ΔCE: pooled token CE, ablated minus clean, one text at a time
        def ce(ivs):
            tot = n = 0
            for t in texts:
                lg = tiny.run(t, interventions=ivs).logits[0]
                ids = tiny.tokenize(t)[0][0]
                tot += float(F.cross_entropy(lg[:-1], ids[1:], reduction="sum"))
                n += len(ids) - 1
            return tot / n
        base = ce([])
        assert r.clean_ce[j] == pytest.approx(base, rel=1e-5)
        for i, (l, h) in enumerate(heads):
            assert r.dce[i, j] == pytest.approx(ce([HeadAblation(l, h)]) - base, abs=1e-4)


def test_random_heads_spearman_and_outputs(tiny_llama):
    r = active_dormant(tiny_llama, DOMS, heads=5, seed=3)
    again = active_dormant(tiny_llama, DOMS, heads=5, seed=3)
    assert len(r.heads) == 5 and r.heads == again.heads and len(set(r.heads)) == 5
    from scipy.stats import spearmanr

    for j, d in enumerate(r.domains):
        assert r.spearman[d] == pytest.approx(spearmanr(r.sink_mass[:, j], np.abs(r.dce[:, j])).statistic)
    df = r.to_frame()
    assert len(df) == 10 and set(df["label"]) <= {"dormant", "active", "mixed"}
    fig = r.figure()
    assert len(fig.data) == 2 and fig.data[0].text[0].startswith("L")
    assert "ActiveDormantReport" in repr(r) and "<table" in r._repr_html_()
    assert r.wide().shape[0] == 5


def test_bundled_domains():
    assert set(DOMAINS) >= {"prose", "code"}
    for d in ("prose", "code"):
        texts = load_domain(d)
        assert len(texts) == 6 and all(t.strip() for t in texts)
    assert "def " in load_domain("code")[0]
    with pytest.raises(wb.InputError, match="Unknown domain"):
        load_domain("poetry")


def test_active_dormant_bad_input(tiny_llama):
    with pytest.raises(wb.InputError, match="No domains"):
        active_dormant(tiny_llama, {}, heads=[(0, 0)])
    with pytest.raises(wb.InputError, match="empty"):
        active_dormant(tiny_llama, {"prose": []}, heads=[(0, 0)])
    with pytest.raises(wb.InputError, match="Unknown domain"):
        active_dormant(tiny_llama, ["poetry"], heads=[(0, 0)])
    with pytest.raises(wb.InputError, match="Layer"):
        active_dormant(tiny_llama, DOMS, heads=[(2, 0)])
    with pytest.raises(wb.InputError, match="Head"):
        active_dormant(tiny_llama, DOMS, heads=[(0, 4)])
    with pytest.raises(wb.InputError, match="pair"):
        active_dormant(tiny_llama, DOMS, heads=[3])
    with pytest.raises(wb.InputError, match="skip_queries"):
        active_dormant(tiny_llama, {"short": ["abc"]}, heads=[(0, 0)], skip_queries=4)
    with pytest.raises(wb.InputError, match="random heads"):
        active_dormant(tiny_llama, DOMS, heads=100)


# ---------------------------------------------------------------------------------- SmolLM2
@pytest.mark.smollm2
def test_active_dormant_on_smollm2(smollm2):
    doms = {"prose": load_domain("prose")[:2], "code": load_domain("code")[:2]}
    heads = [(14, 3), (22, 0), (23, 6)]
    r = active_dormant(smollm2, doms, heads=heads)
    sink = dict(zip(heads, r.sink_mass[:, 0]))
    assert sink[(14, 3)] > 0.7  # L14H3 sinks on prose (docs/sinks.md, section 5)
    i = heads.index((14, 3))
    assert r.sink_mass[i, 0] > r.sink_mass[i, 1]  # and less on code
    assert np.isfinite(r.dce).all() and abs(r.dce[i, 0]) < 0.02


@pytest.mark.smollm2
def test_qk_disruption_hurts_passkey_more_than_control(smollm2):
    from probes.sinks.passkey_disruption import FACTUAL_PROMPTS, qk_disruption_effect
    from workbench.texts.tasks import passkey_prompts

    # Position 0 kept: measured drops (nats/token) passkey 0.149 vs control -0.002, factual -0.03. With
    # position 0 disrupted too, passkey drops 0.145 but the short factual prompts drop 1.7 (the sink breaks).
    rep = qk_disruption_effect(smollm2, passkey_prompts(smollm2, 2, 128, seed=0), FACTUAL_PROMPTS[:2], skip_first=True)
    assert rep.logprob_drop("disrupt", "passkey") > rep.logprob_drop("control", "passkey") + 0.03
    assert rep.logprob_drop("disrupt", "passkey") > rep.logprob_drop("disrupt", "factual") + 0.03
    df = rep.to_frame()
    assert len(df) == 6 and df.loc[(df.condition == "clean"), "accuracy_drop"].eq(0).all()
    assert len(rep.figure().data) == 6
