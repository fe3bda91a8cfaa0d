"""Linear relational embeddings (probes.factual.lre): Jacobians, the estimator, faithfulness."""
import pytest
import torch

import workbench as wb
from probes.factual.lre import (RelationSample, batched_jacobian, country_relation, estimate_lre, fit_lre,
                                lre_predict, subject_map, subject_token_positions)


def test_estimator_recovers_an_exactly_linear_map():
    g = torch.Generator().manual_seed(0)
    m, c = torch.randn(12, 8, generator=g), torch.randn(12, generator=g)
    subjects = torch.randn(5, 8, generator=g)
    fns = [lambda s: s @ m.T + c] * 5
    w, b, outs = estimate_lre(fns, subjects, chunk=5)
    assert torch.allclose(w, m, atol=1e-5) and torch.allclose(b, c, atol=1e-5)
    assert torch.allclose(outs, subjects @ m.T + c, atol=1e-5)
    # faithfulness 1 at beta = 1: the LRE output decodes to what the "model" outputs
    u = torch.randn(12, 30, generator=g)
    held = torch.randn(20, 8, generator=g)
    assert ((lre_predict(w, b, held, 1.0) @ u).argmax(-1) == ((held @ m.T + c) @ u).argmax(-1)).all()
    assert torch.allclose(lre_predict(w, b, held, 2.0), 2 * held @ m.T + c, atol=1e-5)


def test_bias_is_the_mean_of_per_sample_offsets():
    """b = mean_i (o_i - J_i s_i) for a nonlinear map, with J_i its exact Jacobian."""
    a = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    fn = lambda s: torch.tanh(s @ a.T)  # noqa: E731
    subjects = torch.tensor([[0.1, 0.2], [-0.3, 0.4]])
    w, b, _ = estimate_lre([fn, fn], subjects)
    js = [torch.diag(1 - torch.tanh(a @ s) ** 2) @ a for s in subjects]
    assert torch.allclose(w, (js[0] + js[1]) / 2, atol=1e-5)
    offs = [torch.tanh(a @ s) - j @ s for s, j in zip(subjects, js)]
    assert torch.allclose(b, (offs[0] + offs[1]) / 2, atol=1e-5)


def test_model_jacobian_matches_finite_differences(tiny):
    p = "the cat is big and red"
    pos = subject_token_positions(tiny, p, "cat")[-1]
    fn = subject_map(tiny, p, pos, 0)
    run = tiny.run(p, capture=["resid_post"], layers=[0, tiny.info.n_layers - 1])
    s = run["resid_post", 0][0, pos]
    with torch.no_grad():
        assert torch.allclose(fn(s[None])[0], run["resid_post", tiny.info.n_layers - 1][0, -1], atol=1e-4)
    j = batched_jacobian(fn, s, chunk=24)
    assert j.shape == (tiny.info.d_model, tiny.info.d_model)
    u = torch.randn(tiny.info.d_model, generator=torch.Generator().manual_seed(1))
    eps = 1e-2
    with torch.no_grad():
        fd = (fn((s + eps * u)[None]) - fn((s - eps * u)[None]))[0] / (2 * eps)
    assert float((j @ u - fd).norm() / fd.norm()) < 1e-2


def test_lre_is_the_identity_when_subject_state_is_the_output(tiny):
    """Subject at the last token and ℓ = L-1: o = s exactly, so W = I, b = 0 and faithfulness is 1."""
    L, d = tiny.info.n_layers, tiny.info.d_model
    res = fit_lre(tiny, [("the cat is big", "big"), ("a dog runs far", "far")],
                  [("my fish swims", "swims"), ("two owls hoot", "hoot")], layer=L - 1, beta=1.0)
    assert torch.allclose(res.W, torch.eye(d), atol=1e-6) and res.b.abs().max() < 1e-4
    assert res.faithfulness == 1.0 and res.faithfulness_by_beta[1.0] == 1.0
    assert len(res.to_frame()) == 2 and res.figure().data and res._repr_html_() and "faithfulness" in repr(res)


def test_country_relations_are_well_formed():
    for rel in ("capital", "demonym"):
        rows = country_relation(rel, 10)
        assert len(rows) == 10 and len({r.subject for r in rows}) == 10
        for r in rows:
            assert r.subject in r.prompt and r.answer.startswith(" ") and r.relation == rel
    assert country_relation("capital", 3)[0].answer == " Beijing"


def test_subject_positions_round_trip(tiny_llama):
    p = "User: What is the capital city of France?\nAssistant: The capital city of France is"
    pos = subject_token_positions(tiny_llama, p, "France")
    ids = tiny_llama.tokenize(p)[0][0]
    assert tiny_llama.to_string(ids[pos]).strip() == "France" and pos[0] > p.index("Assistant")


def test_lre_bad_input(tiny_llama):
    s = RelationSample("the cat is big", "cat")
    with pytest.raises(wb.InputError, match="not in the prompt"):
        subject_token_positions(tiny_llama, "the dog", "cat")
    with pytest.raises(wb.InputError, match="both train and test"):
        fit_lre(tiny_llama, [s], [s], layer=0)
    with pytest.raises(wb.InputError, match="at least one training"):
        fit_lre(tiny_llama, [], [s], layer=0)
    with pytest.raises(wb.InputError, match="out of range"):
        fit_lre(tiny_llama, [s], [("a dog", "dog")], layer=9)
    with pytest.raises(wb.InputError, match="relation"):
        country_relation("currency")
