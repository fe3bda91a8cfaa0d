"""Frames: WordNet set-up, whitening, Procrustes, correlation, word/concept frames, bad input."""
import os

import pytest
import torch

import workbench as wb
from probes.frames import (
    combine,
    concept,
    concept_bank,
    correlation_matrix,
    frame_correlation,
    procrustes,
    token_space,
    windows,
    word_frame,
)
from probes.frames.token_space import whiten
from probes.frames.word_frames import frame_ranks, frames_from_ids, tokenize_words
from probes.frames.wordnet import (
    LEXNAMES,
    WordNetMissingError,
    lexnames_text,
    prepare_wordnet,
    synset_table,
    wordnet_available,
)

requires_wordnet = pytest.mark.skipif(
    not wordnet_available(), reason="WordNet 3.0 (Debian wordnet-base) is not installed: run `make system`")


# ------------------------------------------------------------------ WordNet set-up
def test_missing_wordnet_says_make_system(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WORKBENCH_WORDNET_DIR", str(tmp_path / "nowhere"))
    assert not wordnet_available()
    with pytest.raises(WordNetMissingError, match="make system"):
        prepare_wordnet()
    assert not (tmp_path / "cache" / "nltk_data" / "corpora" / "wordnet").exists()


@requires_wordnet
def test_prepare_wordnet_copies_atomically_with_lexnames(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    dst = prepare_wordnet()
    assert dst == tmp_path / "nltk_data" / "corpora" / "wordnet"
    lines = (dst / "lexnames").read_text().splitlines()
    assert len(lines) == 45 == len(LEXNAMES)
    assert lines[3] == "03\tnoun.Tops\t1" and lines[-1] == "44\tadj.ppl\t3"
    assert (dst / "data.noun").stat().st_size > 10_000_000
    assert not (dst / "bin").exists()
    assert [p.name for p in dst.parent.iterdir()] == ["wordnet"]  # no temp folder left behind
    assert prepare_wordnet() == dst  # second call: nothing to do
    assert lexnames_text().count("\n") == 45


@requires_wordnet
def test_synset_table_matches_nltk():
    from probes.frames import get_wordnet

    wn = get_wordnet()
    assert wn.get_version() == "3.0"
    ours = {r.name: r for r in synset_table("r")}
    theirs = list(wn.all_synsets("r"))
    assert len(ours) == len(theirs) == 3621
    for s in theirs:
        assert list(ours[s.name()].lemmas) == s.lemma_names() and ours[s.name()].lexname == s.lexname()
    nouns = synset_table("n")
    assert len(nouns) == 82115
    assert sum(len(r.lemmas) >= 3 for r in nouns) == 14281  # WordNet 3.0 nouns with >= 3 lemmas
    for r in nouns[::997] + synset_table("s")[::499]:  # a spread of nouns and adjective satellites
        s = wn.synset(r.name)
        assert list(r.lemmas) == s.lemma_names() and r.lexname == s.lexname() and r.pos == s.pos()


# ------------------------------------------------------------------ token space
def test_whitening_gives_identity_covariance_on_kept_eigenvalues():
    g = torch.Generator().manual_seed(0)
    # 300 rows in 12 dims with a rank-9 covariance: 3 eigenvalues are (numerically) zero.
    u = torch.randn(300, 9, generator=g, dtype=torch.float64) @ torch.randn(9, 12, generator=g, dtype=torch.float64)
    u = u + 5.0  # an offset the centring must remove
    x, w, mean, ev, basis = whiten(u, tol=1e-6)
    assert basis.shape == (12, 9) and int((ev > 1e-6).sum()) == 9
    assert torch.allclose(x.mean(0), torch.zeros(12, dtype=x.dtype), atol=1e-9)
    cov = torch.cov(x.T)
    assert torch.allclose(basis.T @ cov @ basis, torch.eye(9, dtype=x.dtype), atol=1e-8)
    assert torch.allclose(cov, basis @ basis.T, atol=1e-8)  # nothing in the dropped directions


def test_token_space_of_a_model(tiny):
    ts = token_space(tiny)
    assert ts.vectors.shape == (tiny.info.d_vocab, tiny.info.d_model)
    pad = tiny.tokenizer.pad_token_id
    assert torch.count_nonzero(ts.vectors[pad]) == 0
    keep = torch.ones(ts.n_tokens, dtype=torch.bool)
    keep[pad] = False
    u = tiny.hf.get_output_embeddings().weight.detach().double()
    g = (u @ ts.whitener) - ts.mean
    cov = torch.cov(g.T)
    assert torch.allclose(ts.basis.T @ cov @ ts.basis, torch.eye(ts.kept, dtype=cov.dtype), atol=1e-6)
    assert torch.allclose(ts.vectors[keep], g[keep].float(), atol=1e-4)
    assert token_space(tiny) is ts  # cached
    assert len(ts.to_frame()) == tiny.info.d_model and ts.figure().data
    assert "TokenSpace" in ts._repr_html_()


# ------------------------------------------------------------------ Procrustes and correlation
def test_procrustes_orthonormal_idempotent_scale_invariant():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(5, 40, 3, generator=g, dtype=torch.float64)
    c = procrustes(m)
    eye = torch.eye(3, dtype=c.dtype).expand(5, 3, 3)
    assert torch.allclose(c.transpose(-1, -2) @ c, eye, atol=1e-10)
    assert torch.allclose(procrustes(c), c, atol=1e-10)
    assert torch.allclose(procrustes(7.5 * m), c, atol=1e-10)
    # the closest orthonormal frame: no other orthonormal frame is nearer to m
    q, _ = torch.linalg.qr(m)
    assert ((m - c) ** 2).sum((-2, -1)).le(((m - q) ** 2).sum((-2, -1)) + 1e-9).all()


def test_frame_correlation_self_is_one_and_padding_is_neutral():
    g = torch.Generator().manual_seed(2)
    c = procrustes(torch.randn(30, 4, generator=g, dtype=torch.float64))
    assert float(frame_correlation(c, c)) == pytest.approx(1.0, abs=1e-12)
    # a 2-column frame padded with zero columns: trace unchanged, rank proxy counts 2
    a = torch.randn(30, 2, generator=g, dtype=torch.float64)
    a_pad = torch.cat([a, torch.zeros(30, 2, dtype=a.dtype)], 1)
    tr = float((a * c[:, :2]).sum())
    assert float(frame_correlation(a_pad, c)) == pytest.approx(tr / (2 * 4) ** 0.5, rel=1e-12)
    assert float(frame_correlation(torch.zeros(30, 4), c.float())) == 0.0
    batch = torch.stack([c, -c, a_pad])
    m = correlation_matrix(batch, batch)
    assert torch.allclose(m.diagonal()[:2], torch.tensor([1.0, 1.0], dtype=m.dtype), atol=1e-6)
    assert torch.allclose(m, frame_correlation(batch[:, None], batch[None]).to(m.dtype), atol=1e-5)


def test_windows_are_zero_padded_at_the_end():
    h = torch.arange(12.0).reshape(4, 3)  # T=4, d=3
    w = windows(h, 3)
    assert w.shape == (4, 3, 3)
    assert torch.equal(w[0], h[0:3].T)
    assert torch.equal(w[3][:, 0], h[3]) and torch.count_nonzero(w[3][:, 1:]) == 0


# ------------------------------------------------------------------ word frames
def test_word_frame_columns_are_token_vectors(tiny_llama):
    ts = token_space(tiny_llama)
    wf = word_frame(tiny_llama, "abca", k=6)
    a, b = tiny_llama.tokenizer.convert_tokens_to_ids(["a", "b"])
    assert wf.token_ids[:2] == [a, b] and wf.token_ids[3] == a and wf.frame.shape == (tiny_llama.info.d_model, 6)
    assert torch.equal(wf.frame[:, 1], ts.vectors[b])
    assert torch.count_nonzero(wf.frame[:, 4:]) == 0
    assert wf.rank == 3 and not wf.full_rank  # 'a' repeats
    assert word_frame(tiny_llama, "abc", k=3).full_rank
    assert len(wf.to_frame()) == 4 and wf.figure().data


def test_frame_ranks_batch_matches_single(tiny_llama):
    ts = token_space(tiny_llama)
    ids = [[97, 98], [97, 97], [97, 98, 99, 97], [100]]
    assert frame_ranks(ts.vectors, ids).tolist() == [2, 1, 3, 1]
    f, lens = frames_from_ids(ts.vectors, ids, 4)
    assert f.shape == (4, tiny_llama.info.d_model, 4) and lens.tolist() == [2, 2, 4, 1]


def test_word_frame_bad_input(tiny_llama):
    with pytest.raises(wb.InputError, match="more than the frame width k=3"):
        word_frame(tiny_llama, "abcd", k=3)
    with pytest.raises(wb.InputError, match="non-empty word"):
        word_frame(tiny_llama, "  ")
    with pytest.raises(wb.InputError, match="positive integer"):
        word_frame(tiny_llama, "ab", k=0)


# ------------------------------------------------------------------ concept frames (tiny, byte tokens)
@requires_wordnet
def test_concept_frame_is_procrustes_of_summed_word_frames(tiny_llama):
    ts = token_space(tiny_llama)
    c = concept(tiny_llama, "dog.n.01", k=14)  # byte tokens: 'domestic dog' fits, 'Canis familiaris' does not
    assert torch.allclose(c.frame.T @ c.frame, torch.eye(14), atol=1e-5)
    assert c.lemmas == ["dog", "domestic dog"]
    rows = [f.format(w=w) for w in c.lemmas for f in (" {w}", "{w} ", " {w} ", "{w}")]
    assert c.n_rows == len(rows) == 8
    fr, _ = frames_from_ids(ts.vectors, tokenize_words(tiny_llama.tokenizer, rows), 14)
    assert torch.allclose(c.frame, procrustes(fr.sum(0).double()).float(), atol=1e-5)
    assert float(frame_correlation(c.frame, c.frame)) == pytest.approx(1.0, abs=1e-5)


@requires_wordnet
def test_combined_concept_and_bank(tiny_llama):
    a, b = concept(tiny_llama, "woman.n.01", k=8), concept(tiny_llama, "man.n.01", k=8)
    ab = combine(a, b)
    assert torch.allclose(ab.frame, procrustes((a.frame - b.frame).double()).float(), atol=1e-5)
    assert torch.allclose(concept(tiny_llama, "man.n.01 - woman.n.01", k=8).frame, -ab.frame, atol=1e-5)
    names = ["dog.n.01", "cat.n.01", "woman.n.01", "car.n.01"]
    bank = concept_bank(tiny_llama, min_lemmas=2, k=8, synsets=names)
    assert "dog.n.01" in bank and "cat.n.01" not in bank or len(bank) >= 2
    for n in bank.names:
        assert torch.allclose(bank[n].frame, concept(tiny_llama, n, k=8).frame, atol=1e-4)
    assert len(bank.to_frame()) == len(bank) and bank.figure().data
    with pytest.raises(wb.InputError, match="not in this bank"):
        bank["zebra.n.01"]


@requires_wordnet
def test_concept_bad_input(tiny_llama):
    with pytest.raises(wb.InputError, match="Unknown WordNet synset 'dgo.n.01'"):
        concept(tiny_llama, "dgo.n.01")
    with pytest.raises(wb.InputError, match="Synsets for 'dog': dog.n.01"):
        concept(tiny_llama, "dog.n.99")
    with pytest.raises(wb.InputError, match="fits in k=2 tokens"):
        concept(tiny_llama, "dog.n.01", k=2)
    with pytest.raises(wb.InputError, match="synset name"):
        concept(tiny_llama, "")


def test_environment_is_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
