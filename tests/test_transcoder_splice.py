"""Transcoder splicing and feature clamping (interventions/transcoder_splice.py).

Exact answers: splicing with the error term reproduces the clean logits; the exact transcoder of
a ReLU MLP (GPT-2 architecture with activation "relu") spliced into every layer reproduces the
model; ablating a feature removes exactly z_i · W_dec[i] from mlp_out; clamping moves the logits
along the feature's logit effect. Bad transcoders give InputError and no hook is left behind."""
import pytest
import torch
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

from interventions.transcoder_splice import FeatureAblate, FeatureClamp, SpliceTranscoder
from transcoder_helpers import random_tc
from workbench.errors import InputError

PROMPT = "the cat sat on the mat and looked at the dog"


@pytest.fixture(scope="module")
def relu_gpt2():
    """A tiny GPT-2 whose MLPs are ReLU MLPs (so an exact transcoder exists)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import workbench as wb
    from workbench.loading.tiny import byte_tokenizer

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=257, n_embd=64, n_layer=2, n_head=4, n_positions=64, activation_function="relu",
                     initializer_range=0.2, bos_token_id=256, eos_token_id=256, pad_token_id=256)
    cfg._attn_implementation = "eager"
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm gains and biases, so the fold below matters
        for blk in hf.transformer.h:
            blk.ln_2.weight.uniform_(0.5, 1.5)
            blk.ln_2.bias.normal_(0, 0.1)
    return wb.wrap(hf, byte_tokenizer(), name="relu-gpt2")


def exact_tc(model, layer):
    """The transcoder of GPT-2 MLP ``layer`` reading mlp_in = LN(x) before the gain: W_enc = diag(g) W_fc,
    b_enc = β W_fc + b_fc, W_dec = W_proj, b_dec = b_proj (no sparsity)."""
    blk = model.hf.transformer.h[layer]
    g, beta = blk.ln_2.weight.detach(), blk.ln_2.bias.detach()
    w_fc, b_fc = blk.mlp.c_fc.weight.detach(), blk.mlp.c_fc.bias.detach()  # Conv1D: (d, 4d)
    w_pr, b_pr = blk.mlp.c_proj.weight.detach(), blk.mlp.c_proj.bias.detach()  # (4d, d)
    d, f = w_fc.shape
    tc = Transcoder(TranscoderConfig(d_in=d, d_sae=f, d_out=d, apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.W_enc.copy_(g[:, None] * w_fc)
        tc.b_enc.copy_(beta @ w_fc + b_fc)
        tc.W_dec.copy_(w_pr)
        tc.b_dec.copy_(b_pr)
    return tc


def test_exact_transcoder_reproduces_relu_model(relu_gpt2):
    clean = relu_gpt2.run(PROMPT).logits
    tcs = {l: exact_tc(relu_gpt2, l) for l in range(relu_gpt2.info.n_layers)}
    spliced = relu_gpt2.run(PROMPT, interventions=[SpliceTranscoder(tcs)]).logits
    torch.testing.assert_close(spliced, clean, atol=1e-4, rtol=1e-4)
    # a perturbed transcoder does change the output (the splice is really applied)
    with torch.no_grad():
        tcs[1].W_dec.mul_(1.5)
    assert (relu_gpt2.run(PROMPT, interventions=[SpliceTranscoder(tcs)]).logits - clean).abs().max() > 1e-2
    assert relu_gpt2.leftover_hooks() == []


def test_splice_with_error_reproduces_clean_logits(tiny):
    d = tiny.info.d_model
    tcs = {0: random_tc(d, seed=1, skip=True), 1: random_tc(d, seed=2)}
    clean = tiny.run(PROMPT).logits
    with_err = tiny.run(PROMPT, interventions=[SpliceTranscoder(tcs, with_error=True)]).logits
    torch.testing.assert_close(with_err, clean, atol=1e-5, rtol=1e-5)
    without = tiny.run(PROMPT, interventions=[SpliceTranscoder(tcs)]).logits
    assert (without - clean).abs().max() > 1e-2


def test_splice_mlp_out_is_transcoder_output(tiny_llama):
    d = tiny_llama.info.d_model
    tc = random_tc(d, seed=3, skip=True)
    run = tiny_llama.run(PROMPT, capture=["mlp_in", "mlp_out"], layers=[1], interventions=[SpliceTranscoder({1: tc})])
    torch.testing.assert_close(run["mlp_out", 1], tc(run["mlp_in", 1]), atol=1e-6, rtol=1e-6)


def test_splice_with_error_gradient_flows_through_transcoder_only(tiny_llama):
    d = tiny_llama.info.d_model
    tc = random_tc(d, seed=4)
    run = tiny_llama.run(PROMPT, interventions=[SpliceTranscoder({0: tc}, with_error=True)], grad=True)
    run.logits[0, -1].logsumexp(-1).backward()
    assert tc.W_dec.grad is not None and tc.W_dec.grad.abs().sum() > 0
    tc.zero_grad()


def test_feature_ablate_removes_its_decoder_row(tiny):
    d = tiny.info.d_model
    tc = random_tc(d, seed=5)
    clean = tiny.run(PROMPT, capture=["mlp_in", "mlp_out"], layers=[1])
    z = tc.encode(clean["mlp_in", 1])[0]  # (T, F)
    i = int(z.sum(0).argmax())
    assert z[:, i].abs().sum() > 0
    ab = tiny.run(PROMPT, capture=["mlp_out"], layers=[1], interventions=[FeatureAblate(1, tc, i)])
    expect = clean["mlp_out", 1][0] - z[:, i:i + 1] * tc.W_dec[i]
    torch.testing.assert_close(ab["mlp_out", 1][0], expect.detach(), atol=1e-5, rtol=1e-5)
    # only at one position
    ab1 = tiny.run(PROMPT, capture=["mlp_out"], layers=[1], interventions=[FeatureAblate(1, tc, i, positions=[3])])
    diff = (ab1["mlp_out", 1][0] - clean["mlp_out", 1][0]).abs().sum(-1)
    assert set(torch.nonzero(diff > 1e-7).flatten().tolist()) <= {3}
    # an inactive feature: ablation is a no-op
    dead = [j for j in range(z.shape[1]) if float(z[:, j].detach().abs().sum()) == 0.0]
    if dead:
        nop = tiny.run(PROMPT, interventions=[FeatureAblate(1, tc, dead[0])]).logits
        torch.testing.assert_close(nop, tiny.run(PROMPT).logits, atol=1e-6, rtol=1e-6)


def test_clamp_moves_logits_along_logit_effect(tiny):
    from probes.transcoders.features import logit_effects

    d, L = tiny.info.d_model, tiny.info.n_layers
    tc = random_tc(d, seed=6)
    run = tiny.run(PROMPT, capture=["mlp_in"], layers=[L - 1])
    clean = run.logits[0, -1]
    z = tc.encode(run["mlp_in", L - 1][0, -1]).detach()  # (F,) at the last token
    for i in range(4):
        eff = logit_effects(tiny, tc, L - 1, i).effects
        for value in (float(z[i]) + 1.0, max(float(z[i]) - 1.0, 0.0)):
            up = tiny.run(PROMPT, interventions=[FeatureClamp(L - 1, tc, i, value, positions=[-1])]).logits[0, -1]
            if value == float(z[i]):
                continue
            corr = torch.corrcoef(torch.stack([up - clean, (value - float(z[i])) * eff]))[0, 1]
            assert corr > 0.8, (i, value, corr)


def test_bad_transcoders_are_input_errors(tiny_llama):
    d = tiny_llama.info.d_model
    with pytest.raises(InputError, match="d_model"):
        tiny_llama.run(PROMPT, interventions=[SpliceTranscoder({0: random_tc(d + 1)})])
    wrong_layer = random_tc(d, metadata={"hook_name": "blocks.1.ln2.hook_normalized", "hook_layer": 1})
    with pytest.raises(InputError, match="layer 1"):
        tiny_llama.run(PROMPT, interventions=[SpliceTranscoder({0: wrong_layer})])
    other_model = random_tc(d, metadata={"model_fingerprint": "not-this-model"})
    with pytest.raises(InputError, match="fingerprint"):
        tiny_llama.run(PROMPT, interventions=[FeatureClamp(0, other_model, 0, 1.0)])
    with pytest.raises(InputError, match="out of range"):
        tiny_llama.run(PROMPT, interventions=[FeatureClamp(0, random_tc(d), 99, 1.0)])
    with pytest.raises(InputError, match="out of range"):
        tiny_llama.run(PROMPT, interventions=[SpliceTranscoder({5: random_tc(d)})])
    with pytest.raises(InputError):
        SpliceTranscoder({})
    with pytest.raises(InputError):
        FeatureClamp(0, random_tc(d), 0, "big")
    with pytest.raises(InputError, match="Expected a transcoder"):
        tiny_llama.run(PROMPT, interventions=[SpliceTranscoder({0: torch.nn.Linear(d, d)})])
    assert tiny_llama.leftover_hooks() == []


def test_no_hook_leak_when_transcoder_fails_mid_forward(tiny_llama):
    d = tiny_llama.info.d_model
    tc = random_tc(d)

    def boom(_x):
        raise RuntimeError("transcoder failed")

    tc.encode = boom
    with pytest.raises(RuntimeError, match="transcoder failed"):
        tiny_llama.run(PROMPT, interventions=[FeatureClamp(1, tc, 0, 1.0)])
    assert tiny_llama.leftover_hooks() == []
    with pytest.raises(RuntimeError, match="transcoder failed"):
        with tiny_llama.intervene(FeatureClamp(1, tc, 0, 1.0)):
            tiny_llama.run(PROMPT)
    assert tiny_llama.leftover_hooks() == []
    assert tiny_llama.run(PROMPT).logits is not None  # the model still works
