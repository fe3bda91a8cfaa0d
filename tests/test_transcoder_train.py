"""Transcoder training: known-answer recovery, unit-norm decoder, resume, NaN handling, bad input."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from probes.transcoders import (
    TopKTranscoder,
    TrainingDivergedError,
    TranscoderTrainer,
    TranscoderTrainingConfig,
    load_corpus,
    token_windows,
    train_transcoder,
)
from probes.transcoders.checkpoint import load_training_state
from sae_lens.saes.transcoder import JumpReLUTranscoder, SkipTranscoder, Transcoder
from workbench.errors import InputError


def synthetic_mlp(n_feat=32, d=16, seed=0):
    """y = Σ_j ReLU(e_j·x − 0.3) d_j on sparse x = Σ_j a_j e_j (about 1.6 active features)."""
    g = torch.Generator().manual_seed(seed)
    E = F.normalize(torch.randn(n_feat, d, generator=g), dim=-1)
    D = F.normalize(torch.randn(n_feat, d, generator=g), dim=-1)

    def batches(bs=256, seed=1):
        g2 = torch.Generator().manual_seed(seed)
        while True:
            a = (torch.rand(bs, n_feat, generator=g2) < 0.05) * (0.5 + torch.rand(bs, n_feat, generator=g2))
            x = a @ E
            yield x, torch.relu(x @ E.T - 0.3) @ D

    return E, D, batches


def small_cfg(**kw):
    base = dict(d_in=16, d_out=16, d_sae=48, total_steps=600, lr=1e-2, batch_size=256, dead_window=50,
                resample_until=300, resample_every=50, lr_warmup_steps=10)
    base.update(kw)
    return TranscoderTrainingConfig(**base)


def random_pairs(d_in=12, d_out=10, bs=64, seed=3):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_in, d_out, generator=g)
    while True:
        x = torch.randn(bs, d_in, generator=g)
        yield x, torch.relu(x) @ W


def test_known_answer_recovery_and_l1_controls_l0():
    E, D, batches = synthetic_mlp()
    res = train_transcoder(batches(), small_cfg(activation="relu", l1_coefficient=0.1))
    W_dec = F.normalize(res.transcoder.W_dec.detach(), dim=-1)
    matched = ((D @ W_dec.T).max(1).values > 0.9).float().mean()
    assert matched >= 0.75, f"only {matched:.2f} of ground-truth decoder directions recovered"
    assert res.history.iloc[-1]["mse"] < 0.1
    sparse = train_transcoder(batches(), small_cfg(activation="relu", l1_coefficient=1.0, total_steps=300))
    assert sparse.history.iloc[-1]["l0"] < res.history.iloc[-1]["l0"]


@pytest.mark.parametrize("activation,skip,cls", [("relu", False, Transcoder), ("relu", True, SkipTranscoder),
                                                  ("topk", False, TopKTranscoder), ("topk", True, SkipTranscoder),
                                                  ("jumprelu", False, JumpReLUTranscoder)])
def test_decoder_rows_unit_norm_and_classes(activation, skip, cls):
    cfg = TranscoderTrainingConfig(d_in=12, d_out=10, d_sae=32, activation=activation, skip=skip, k=4,
                                   total_steps=15, dead_window=5, resample_until=10, resample_every=5)
    tr = TranscoderTrainer(cfg)
    for x, y in itertools.islice(random_pairs(), 15):
        tr.step(x, y)
        norms = tr.tc.W_dec.detach().norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    tc = tr.transcoder()
    assert isinstance(tc, cls)
    x = torch.randn(5, 12)
    z = tc.encode(x)
    if activation == "topk":
        assert int((z > 0).sum(-1).max()) <= 4
    if activation == "jumprelu":
        assert torch.allclose(tc.threshold, tr.log_threshold.exp())
    if skip:
        assert tc.W_skip.abs().sum() > 0  # the skip connection was trained


def test_decoder_gradient_is_tangent():
    """The update removes each decoder row's parallel gradient component (checked with SGD-like Adam state)."""
    cfg = TranscoderTrainingConfig(d_in=12, d_out=10, d_sae=16, total_steps=5)
    tr = TranscoderTrainer(cfg)
    x, y = next(random_pairs())
    seen = {}
    orig = tr.opt.step

    def spy():
        seen["dot"] = (tr.tc.W_dec.grad * tr.tc.W_dec).sum(-1).abs().max()
        orig()

    tr.opt.step = spy
    tr.step(x, y)
    assert seen["dot"] < 1e-6


def test_resume_equals_uninterrupted(tmp_path):
    cfg = TranscoderTrainingConfig(d_in=12, d_out=10, d_sae=24, activation="topk", k=3, total_steps=30,
                                   checkpoint_every=10, dead_window=5, lr=3e-3)
    full = train_transcoder(random_pairs(), cfg, checkpoint_dir=tmp_path / "full")
    part = train_transcoder(itertools.islice(random_pairs(), 17), cfg, checkpoint_dir=tmp_path / "split")
    assert part.steps == 17
    assert load_training_state(tmp_path / "split")[1]["step"] == 17
    resumed = train_transcoder(random_pairs(), cfg, checkpoint_dir=tmp_path / "split")
    assert resumed.steps == 30
    for n, p in full.transcoder.named_parameters():
        assert torch.allclose(p, dict(resumed.transcoder.named_parameters())[n], atol=1e-6), n
    other = TranscoderTrainingConfig(**{**cfg.to_dict(), "lr": 1e-2})
    with pytest.raises(InputError, match="different config"):
        train_transcoder(random_pairs(), other, checkpoint_dir=tmp_path / "split")


def test_nan_stops_and_keeps_last_checkpoint(tmp_path):
    def poisoned():
        for i, (x, y) in enumerate(random_pairs()):
            if i == 12:
                y = y.clone()
                y[0, 0] = float("nan")
            yield x, y

    cfg = TranscoderTrainingConfig(d_in=12, d_out=10, d_sae=24, total_steps=50, checkpoint_every=5)
    with pytest.raises(TrainingDivergedError, match="diverged at step 13") as ei:
        train_transcoder(poisoned(), cfg, checkpoint_dir=tmp_path / "ck")
    assert ei.value.checkpoint == tmp_path / "ck"
    assert "Last good checkpoint" in str(ei.value)
    state = load_training_state(tmp_path / "ck")[1]
    assert state["step"] == 10
    tc = Transcoder.load_from_disk(str(tmp_path / "ck"))
    assert all(torch.isfinite(p).all() for p in tc.parameters())
    # The in-memory trainer is left at its last good state, too.
    tr = TranscoderTrainer(cfg)
    for i, (x, y) in enumerate(poisoned()):
        if i == 12:
            before = tr.tc.W_enc.detach().clone()
            with pytest.raises(TrainingDivergedError):
                tr.step(x, y)
            assert torch.equal(before, tr.tc.W_enc) and tr.n_steps == 12
            break
        tr.step(x, y)


def test_empty_and_bad_data_are_clear_errors(tmp_path):
    cfg = TranscoderTrainingConfig(d_in=12, d_out=10, d_sae=24, total_steps=5)
    with pytest.raises(InputError, match="no batches"):
        train_transcoder(iter([]), cfg)
    with pytest.raises(InputError, match="do not match"):
        train_transcoder(iter([(torch.randn(4, 11), torch.randn(4, 10))]), cfg)
    with pytest.raises(InputError, match="activation"):
        TranscoderTrainingConfig(d_in=4, d_out=4, d_sae=8, activation="gelu")
    with pytest.raises(InputError, match="k must be"):
        TranscoderTrainingConfig(d_in=4, d_out=4, d_sae=8, activation="topk", k=9)


def test_harvest_rows_match_captures_and_skip_position_0(tiny_llama):
    from probes.transcoders import harvest_cache, hook_names, pair_batches
    texts = load_corpus("heldout")[:30]
    cache = harvest_cache(tiny_llama, [1], 2 * 31, texts, context=32, batch_prompts=2, seed=None)
    ids = next(token_windows(tiny_llama.tokenizer, texts, context=32, batch_prompts=2, seed=None))
    hi, ho = hook_names(1)
    run = tiny_llama.run(ids, capture=[hi, ho])
    x, y = cache[1]
    assert torch.allclose(x, run.captures[hi][:, 1:].reshape(-1, x.shape[1]))
    assert torch.allclose(y, run.captures[ho][:, 1:].reshape(-1, y.shape[1]))
    batches = list(itertools.islice(pair_batches(tiny_llama, [0, 1], texts, batch_size=16, buffer_tokens=64,
                                                 context=32, batch_prompts=2, max_tokens=200), 6))
    assert batches and all(b[0][0].shape == (16, tiny_llama.info.d_model) for b in batches)
    assert set(batches[0]) == {0, 1}


def test_shuffle_buffer_emits_each_row_once():
    from probes.transcoders import ShuffleBuffer
    buf = ShuffleBuffer(capacity=40, batch_size=8, seed=0)
    rows = torch.arange(100, dtype=torch.float32)[:, None]
    out = [b[0] for chunk in rows.split(13) for b in buf.add([chunk])] + [b[0] for b in buf.drain()]
    seen = torch.cat(out).flatten()
    assert len(seen) == len(set(seen.tolist())) and len(seen) >= 96  # at most one partial batch held back
    assert not torch.equal(seen[:8], torch.arange(8.0))  # shuffled


def test_disk_harvest_matches_memory_and_resumes(tiny_llama, tmp_path):
    import json

    import numpy as np

    from probes.transcoders import harvest_cache
    from probes.transcoders.harvest import DiskActivations, harvest_to_disk
    texts = load_corpus("heldout")[:40]
    n = 5 * 2 * 31
    mem = harvest_cache(tiny_llama, [0, 1], n, texts, context=32, batch_prompts=2, seed=3)
    acts = harvest_to_disk(tiny_llama, [0, 1], n, tmp_path / "a", texts, context=32, batch_prompts=2, seed=3,
                           flush_every=1)
    for l in (0, 1):
        for s, t in (("x", mem[l][0]), ("y", mem[l][1])):
            assert np.allclose(acts.arrays[(s, l)], t.numpy(), atol=2e-3 * float(t.abs().max()))  # float16
    # interrupted after two batches: the rerun fills in the rest and gives the same bytes
    prog = json.loads((tmp_path / "a" / "progress.json").read_text())
    before = {k: np.array(v) for k, v in acts.arrays.items()}
    prog.update(batches=2, rows=2 * 2 * 31, complete=False)
    (tmp_path / "a" / "progress.json").write_text(json.dumps(prog))
    for k in before:
        acts.arrays[k]  # noqa: B018  (memmaps stay valid)
    with pytest.raises(InputError, match="incomplete"):
        DiskActivations(tmp_path / "a")
    again = harvest_to_disk(tiny_llama, [0, 1], n, tmp_path / "a", texts, context=32, batch_prompts=2, seed=3)
    assert all(np.array_equal(before[k], np.asarray(again.arrays[k])) for k in before)
    # an epoch of batches visits every row once
    it = again.batches(batch_size=31, seed=0, layers=[1])
    rows = torch.cat([next(it)[1][1] for _ in range(n // 31)])
    want = torch.from_numpy(np.asarray(again.arrays[("y", 1)]).astype(np.float32))
    # the same multiset of rows (fp16 rows can tie in any one column, so compare whole rows, sorted)
    got_u, got_c = torch.unique(rows, dim=0, return_counts=True)
    want_u, want_c = torch.unique(want, dim=0, return_counts=True)
    assert rows.shape == want.shape and torch.equal(got_u, want_u) and torch.equal(got_c, want_c)


@pytest.mark.parametrize("autocast", [False, True])
def test_topk_training_loss_is_the_saelens_forward(autocast):
    """The trainer's sparse TopK decode (embedding_bag) computes the same reconstruction as the
    SAELens module's forward; with bf16 autocast up to bf16 rounding."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 24, generator=g), torch.randn(256, 24, generator=g)
    cfg = TranscoderTrainingConfig(d_in=24, d_out=24, d_sae=96, activation="topk", k=6, total_steps=10,
                                   autocast=autocast, batch_size=256)
    tr = TranscoderTrainer(cfg)
    tr.step(x, y)  # sets the loss scale
    with torch.no_grad():
        want = float(((tr.tc(x) - y) ** 2).sum(-1).mean() / tr.scale)
        l0 = float((tr.tc.encode(x) > 0).sum(-1).float().mean())
    m = tr.step(x, y)
    assert m["mse"] == pytest.approx(want, rel=2e-2 if autocast else 1e-5)
    assert m["l0"] == pytest.approx(l0, abs=0.5 if autocast else 1e-6)
