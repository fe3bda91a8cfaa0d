"""Transcoder evaluation: exact replacement of a ReLU MLP, known answers for the metrics, SAE comparison."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import workbench as wb
from probes.transcoders import as_sae, build_transcoder, evaluate, from_relu_mlp, load_pretrained, shipped_layers
from probes.transcoders.evaluate import _ReplaceMLP
from workbench.errors import InputError
from workbench.loading.tiny import byte_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 4, "Transcoders replace an MLP by a sparse map. " * 4,
         "A list is a mutable sequence of items in Python. " * 4]


@pytest.fixture(scope="module")
def relu_gpt2():
    """A tiny random GPT-2 whose MLPs are ReLU (so a transcoder can reproduce them exactly)."""
    cfg = GPT2Config(vocab_size=257, n_embd=32, n_layer=2, n_head=4, n_positions=256, activation_function="relu",
                     initializer_range=0.2, bos_token_id=256, eos_token_id=256, pad_token_id=256)
    cfg._attn_implementation = "eager"
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg).eval()
    torch.random.set_rng_state(state)
    hf.config.architectures = ["GPT2LMHeadModel"]
    return wb.wrap(hf, byte_tokenizer(), name="relu-gpt2")


def exact_transcoder(model, layer):
    """W_enc = diag(g) W_fc, b_enc = b_ln W_fc + b_fc (mlp_in is before the LayerNorm's gain and bias)."""
    blk = model.hf.transformer.h[layer]
    g, b = blk.ln_2.weight.detach(), blk.ln_2.bias.detach()
    W_fc, b_fc = blk.mlp.c_fc.weight.detach(), blk.mlp.c_fc.bias.detach()
    tc = from_relu_mlp(g[:, None] * W_fc, b @ W_fc + b_fc, blk.mlp.c_proj.weight.detach(), blk.mlp.c_proj.bias.detach(),
                       metadata={"model_fingerprint": model.fingerprint, "hook_layer": layer})
    return tc.eval()


def test_exact_transcoder_reproduces_relu_mlp(relu_gpt2):
    tc = exact_transcoder(relu_gpt2, 1)
    clean = relu_gpt2.run(TEXTS[0][:60]).logits
    spliced = relu_gpt2.run(TEXTS[0][:60], interventions=[_ReplaceMLP(1, "transcoder", tc, first=0)]).logits
    assert torch.allclose(clean, spliced, atol=1e-4)
    zeroed = relu_gpt2.run(TEXTS[0][:60], interventions=[_ReplaceMLP(1, "zero", first=0)]).logits
    assert (clean - zeroed).abs().max() > 1e-2  # the MLP matters, so the check above has teeth


def test_metrics_known_answers(relu_gpt2):
    exact = exact_transcoder(relu_gpt2, 1)
    d = relu_gpt2.info.d_model
    null = build_transcoder(d, 16, d, metadata={"hook_layer": 1})
    with torch.no_grad():
        null.W_dec.zero_()
        null.b_dec.zero_()
        null.b_enc[:8] = -1e6  # half the features can never fire
    topk = build_transcoder(d, 64, d, "topk", k=5, metadata={"hook_layer": 1})
    rep = evaluate(relu_gpt2, {"exact": exact, "null": null, "topk": topk}, texts=TEXTS, n_windows=3, context=32,
                   batch_prompts=2)
    e, n, t = rep["exact"], rep["null"], rep["topk"]
    assert e.fvu < 1e-8 and abs(e.loss_recovered - 1) < 1e-4
    assert abs(n.ce_replaced - n.ce_zero) < 1e-5 and abs(n.loss_recovered) < 1e-4
    assert n.dead_fraction >= 0.5  # zero output: FVU = Σ‖y‖² / Σ‖y−ȳ‖² ≥ 1
    assert n.fvu >= 1.0
    assert t.l0 == pytest.approx(5.0, abs=0.01)
    assert e.n_tokens == 3 * 31
    df = rep.to_frame()
    assert list(df["name"]) == ["exact", "null", "topk"] and "loss recovered" in df
    assert len(rep.figure().data) == 5 and "EvalReport" in rep._repr_html_()


def test_sae_side_by_side_and_bad_input(relu_gpt2, tiny_llama):
    d = relu_gpt2.info.d_model
    tc = build_transcoder(d, 24, d, "topk", k=3)
    sae = as_sae(tc)
    y = torch.randn(6, d)
    assert torch.allclose(sae(y), tc(y), atol=1e-6)
    rep = evaluate(relu_gpt2, {"sae": sae, "tc": tc}, layer=0, texts=TEXTS, n_windows=2, context=32)
    assert [r.kind for r in rep.results] == ["sae", "transcoder"]
    with pytest.raises(InputError, match="layer"):
        evaluate(relu_gpt2, {"exact": exact_transcoder(relu_gpt2, 1)}, layer=0, texts=TEXTS)
    with pytest.raises(InputError, match="d_model"):
        evaluate(tiny_llama, {"tc": tc}, layer=0, texts=TEXTS)
    with pytest.raises(InputError, match="Nothing"):
        evaluate(relu_gpt2, {}, layer=0)


@pytest.mark.smollm2
def test_shipped_transcoder_recovers_loss(smollm2):
    layer = shipped_layers()[0]
    tc = load_pretrained(smollm2, [layer])[layer]
    rep = evaluate(smollm2, {"tc": tc}, n_windows=4, context=64, batch_prompts=4)
    r = rep["tc"]
    assert r.l0 <= 64 and r.ce_zero > r.ce_clean
    assert r.loss_recovered > 0.5 and r.fvu < 0.6
