"""Every tiny architecture family wraps exactly and describes itself: parity with HF, weights that
reproduce the logits, cached generation equal to uncached, traits analyses rely on, short errors."""
import pytest
import torch

import workbench as wb
from workbench.errors import ModelLoadError
from workbench.loading.tiny import TINY_MODELS, build_tiny

PROMPT = "hello there, general kenobi"


@pytest.fixture(scope="module", params=TINY_MODELS)
def family(request):
    return wb.load(request.param)


def test_parity_and_unembed(family):
    m = family
    assert m.parity.ok(1e-4), m.parity
    L = m.info.n_layers
    run = m.run(PROMPT, capture=["resid_post"], layers=[L - 1])
    assert torch.allclose(m.weights().unembed(run["resid_post", L - 1]), run.logits, atol=1e-4)


def test_cached_generation_equals_uncached(family):
    a = family.generate(PROMPT, 6, stop_at_eos=False)
    b = family.generate(PROMPT, 6, stop_at_eos=False, use_cache=False)
    assert torch.equal(a.new_tokens, b.new_tokens) and torch.allclose(a.logits, b.logits, atol=1e-4)


TRAITS = {
    "tiny-gemma2": dict(logit_softcap=30.0, attn_softcap=50.0, post_norms=True, sliding_window=4),
    "tiny-gemma3": dict(post_norms=True, qk_norm=True, sliding_window=4),
    "tiny-qwen3": dict(qk_norm=True),
    "tiny-neox": dict(parallel_attn_mlp=True, rotary_dim=4),
    "tiny-llama": dict(rotary_dim=16, post_norms=False, parallel_attn_mlp=False),
}


def test_traits(family):
    for k, v in TRAITS.get(family.info.name, {}).items():
        assert getattr(family.info, k) == v, k
    if family.info.layer_types:
        assert family.info.is_sliding(0) and not family.info.is_sliding(1)


def test_gemma_norms_and_embedding_scale():
    m = wb.load("tiny-gemma2")
    W = m.weights()
    assert W.final_norm.offset == 1.0 and W.layers[0].ln1_post is not None
    assert W.embed_scale == pytest.approx(m.info.d_model ** 0.5)
    run = m.run(PROMPT, capture=["embed", "resid_pre"], layers=[0])
    ids = run.tokens[0]
    assert torch.allclose(run["resid_pre", 0][0], W.W_E[ids] * W.embed_scale, atol=1e-5)


def test_model_object_without_architectures_is_wrapped():
    hf, tok = build_tiny("tiny-qwen2")
    hf.config.architectures = None  # as for a model loaded from a GGUF file
    m = wb.load(hf, tokenizer=tok)
    assert m.parity.ok() and hf.config.architectures == ["Qwen2ForCausalLM"]


def test_unsupported_architecture_error_is_short():
    from transformers import PretrainedConfig, PreTrainedModel

    class MysteryConfig(PretrainedConfig):
        model_type = "mystery"

    class MysteryForCausalLM(PreTrainedModel):
        config_class = MysteryConfig

        def __init__(self, cfg):
            super().__init__(cfg)
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, input_ids, **kw):
            raise RuntimeError("never called")

    with pytest.raises(ModelLoadError) as err:
        wb.wrap(MysteryForCausalLM(MysteryConfig()), build_tiny("tiny-llama")[1], check_parity=False)
    msg = str(err.value)
    assert "no adapter for MysteryForCausalLM" in msg and len(msg) < 600


def test_bad_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        wb.load(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="cannot read the GGUF file"):
        wb.load(bad)


def test_dtype_choice():
    m = wb.load("tiny-llama", dtype=torch.bfloat16)
    assert m.weights().W_E.dtype == torch.bfloat16
    assert m.run(PROMPT).logits.dtype == torch.bfloat16
    with pytest.raises(wb.InputError, match="floating torch dtype"):
        wb.load("tiny-llama", dtype=torch.int8)


def test_gguf_file_round_trip(tmp_path):
    """A model written as GGUF loads back with identical logits and tokenization."""
    from workbench.loading.tiny_gguf import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "tiny-llama.gguf")
    m = wb.load(path)
    ref = wb.load("tiny-llama")
    assert m.parity.ok() and m.info.architecture == "LlamaForCausalLM"
    assert m.tokenize(PROMPT)[0].tolist() == ref.tokenize(PROMPT)[0].tolist()
    assert torch.allclose(m.run(PROMPT).logits, ref.run(PROMPT).logits, atol=1e-5)
