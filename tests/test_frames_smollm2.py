"""Frames on SmolLM2: the measured numbers of docs/frames.md (rank share, own-vs-other correlation), bias probe API."""
import random

import numpy as np
import pytest
import torch

import workbench as wb
from probes.frames import (
    bias_probe,
    bootstrap_ci,
    concept,
    concept_bank,
    concept_word_correlation,
    frame_correlation,
    gender_counts,
    rank_statistics,
    token_space,
    word_frame,
    wordnet_lemmas,
)
from probes.frames.wordnet import wordnet_available

requires_wordnet = pytest.mark.skipif(
    not wordnet_available(), reason="WordNet 3.0 (Debian wordnet-base) is not installed: run `make system`")


def test_gender_counts_and_bootstrap():
    assert gender_counts("She told her brother; he and HIS wife left. Shepherd, hereafter.") == (3, 3)  # she her wife | brother he his
    lo, hi = bootstrap_ci(np.array([1.0, 1.0, 1.0, 1.0]))
    assert lo == hi == 1.0
    lo, hi = bootstrap_ci(np.arange(100.0), n_boot=500)
    assert lo < 49.5 < hi and hi - lo < 25


@pytest.mark.smollm2
def test_smollm2_token_space_is_well_posed(smollm2):
    ts = token_space(smollm2)
    assert ts.kept == 576
    assert 1e-4 < float(ts.eigenvalues[0]) < 1e-3 and 0.5 < float(ts.eigenvalues[-1]) < 0.8  # 2.5e-4 .. 0.64
    assert torch.count_nonzero(ts.vectors[smollm2.tokenizer.pad_token_id]) == 0
    with pytest.raises(wb.InputError, match=r"tokenizes to \d+ tokens .* more than the frame width k=3"):
        word_frame(smollm2, " antidisestablishmentarianism", k=3)


@pytest.mark.smollm2
@requires_wordnet
def test_smollm2_rank_share_and_concepts(smollm2):
    words = random.Random(0).sample(wordnet_lemmas(), 4000)
    rs = rank_statistics(smollm2, words, min_tokens=2, max_tokens=8)
    assert rs.n_words > 3000 and abs(rs.full_rank_share - 0.99) < 0.01, rs  # the paper: over 99%
    assert rs.figure().data and len(rs.deficient()) == int((rs.ranks < rs.n_tokens).sum())
    bank = concept_bank(smollm2, min_lemmas=3, pos="n", max_synsets=600)
    assert len(bank) == 600 and bank.frames.shape == (600, 576, 3)
    assert torch.allclose(bank.frames.transpose(1, 2) @ bank.frames, torch.eye(3).expand(600, 3, 3), atol=1e-4)
    cw = concept_word_correlation(smollm2, bank, n_concepts=200)
    # measured (docs/frames.md): 13.7 with own words vs 2.7 with other concepts' words, own higher for 100%
    assert cw.own.mean() > 2 * cw.other.mean() and cw.share_own_higher > 0.9, cw
    w, m = concept(smollm2, "woman.n.01"), concept(smollm2, "man.n.01")
    assert float(frame_correlation(w.frame, w.frame)) == pytest.approx(1.0, abs=1e-5)
    assert float(frame_correlation(w.frame, m.frame)) < 0.99


@pytest.mark.smollm2
@requires_wordnet
def test_smollm2_bias_probe_small(smollm2):
    r = bias_probe(smollm2, k=2, max_new_tokens=4, n_prompts=2, n_boot=200)
    assert len(r.prompts) == 2 and set(r.texts) == {"greedy", "toward", "away"}
    s = r.summary()
    assert list(s["statistic"])[-1] == "toward − away" and (s["ci_low"] <= s["value"] + 1e-9).all()
    assert len(r.to_frame()) == 6 and r.figure().data and "bootstrap" in repr(r)
    with pytest.raises(wb.InputError, match="n_prompts"):
        bias_probe(smollm2, n_prompts=0)
