"""Transcoder save/load: SAELens format and loaders, metadata checks, shipped transcoders."""
import pytest
import torch

from probes.transcoders import (
    build_transcoder,
    load_pretrained,
    load_pretrained_sae,
    load_transcoder,
    save_transcoder,
    shipped_layers,
)
from sae_lens import SAE
from sae_lens.saes.transcoder import Transcoder
from workbench.errors import InputError

KINDS = [(a, s) for a in ("relu", "topk", "jumprelu") for s in (False, True)]


def _random(tc):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return tc


@pytest.mark.parametrize("activation,skip", KINDS)
def test_roundtrip_loads_in_saelens(tmp_path, activation, skip):
    md = {"model_fingerprint": "abc", "hook_name": "blocks.1.ln2.hook_normalized",
          "hook_name_out": "blocks.1.hook_mlp_out", "hook_layer": 1}
    tc = _random(build_transcoder(16, 40, 16, activation, skip, k=5, metadata=md))
    save_transcoder(tc, tmp_path / "tc")
    x = torch.randn(7, 16)
    for loaded in (Transcoder.load_from_disk(str(tmp_path / "tc")), SAE.load_from_disk(str(tmp_path / "tc"))):
        assert type(loaded) is type(tc)
        assert torch.allclose(loaded(x), tc(x), atol=1e-6)
        assert loaded.cfg.metadata.get("hook_layer") == 1
    save_transcoder(tc, tmp_path / "half", half=True)
    half = load_transcoder(tmp_path / "half")
    assert half.W_enc.dtype == torch.float32
    assert torch.allclose(half(x), tc(x), atol=2e-2, rtol=2e-2)


def test_mismatch_is_clear_error(tmp_path, tiny_llama):
    d = tiny_llama.info.d_model
    good = {"model_fingerprint": tiny_llama.fingerprint, "hook_layer": 1}
    save_transcoder(build_transcoder(d, 8, d, metadata=good), tmp_path / "ok")
    assert load_transcoder(tmp_path / "ok", model=tiny_llama, layer=1).cfg.d_sae == 8
    with pytest.raises(InputError, match="trained on layer 1.*not layer 0"):
        load_transcoder(tmp_path / "ok", model=tiny_llama, layer=0)
    save_transcoder(build_transcoder(d, 8, d, metadata={**good, "model_fingerprint": "deadbeef"}), tmp_path / "fp")
    with pytest.raises(InputError, match="another model"):
        load_transcoder(tmp_path / "fp", model=tiny_llama)
    save_transcoder(build_transcoder(d + 1, 8, d, metadata=good), tmp_path / "dim")
    with pytest.raises(InputError, match="d_model"):
        load_transcoder(tmp_path / "dim", model=tiny_llama)
    with pytest.raises(InputError, match="not a saved transcoder"):
        load_transcoder(tmp_path / "nothing")
    if shipped_layers():
        with pytest.raises(InputError, match="another model"):
            load_pretrained(tiny_llama)
    with pytest.raises(InputError, match="No shipped"):
        load_pretrained(tiny_llama, layers=[29])


def test_shipped_files_are_small():
    from probes.transcoders.pretrained import SHIPPED_DIR
    assert len(shipped_layers()) >= 2
    for p in SHIPPED_DIR.rglob("*.safetensors"):  # float16, d_sae 3,072: 7.1 MB; float32 would be 14 MB
        assert p.stat().st_size < 8e6, p


def test_shipped_folders_load_or_name_the_import():
    """The shipped transcoders carry the architecture name that tells plain SAELens what to import
    (an earlier build shipped the bare name, whose KeyError said nothing), and the shipped SAE is a
    built-in SAELens architecture that loads without this package."""
    import json

    from probes.transcoders.architectures import TOPK_ARCH, TOPK_SKIP_ARCH
    from probes.transcoders.pretrained import SHIPPED_DIR
    assert shipped_layers("plain") == shipped_layers() == shipped_layers("sae")
    for layer in shipped_layers():
        for suffix, arch in (("", TOPK_SKIP_ARCH), ("-plain", TOPK_ARCH)):
            cfg = json.loads((SHIPPED_DIR / f"smollm2-layer{layer}{suffix}" / "cfg.json").read_text())
            assert cfg["architecture"] == arch, (layer, suffix, cfg["architecture"])
    for layer in shipped_layers("sae"):
        cfg = json.loads((SHIPPED_DIR / f"smollm2-layer{layer}-sae" / "cfg.json").read_text())
        assert ":" not in cfg["architecture"]
        sae = SAE.load_from_disk(str(SHIPPED_DIR / f"smollm2-layer{layer}-sae"))
        assert not isinstance(sae, Transcoder) and sae.cfg.d_sae == cfg["d_sae"]


@pytest.mark.smollm2
def test_shipped_transcoders_fit_smollm2(smollm2):
    tcs = load_pretrained(smollm2)
    assert sorted(tcs) == shipped_layers() and len(tcs) >= 2
    layer = min(tcs)
    run = smollm2.run("The function returns a list of strings, one for each line of the file.",
                      capture=["mlp_in", "mlp_out"], layers=[layer], logits=None)
    x, y = run["mlp_in", layer][0, 1:], run["mlp_out", layer][0, 1:]
    tc = tcs[layer]
    with torch.no_grad():
        fvu = ((tc(x) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        l0 = (tc.encode(x) > 0).sum(-1).float().mean()
    assert fvu < 0.6 and l0 <= 64
    if layer in shipped_layers("sae"):
        sae = load_pretrained_sae(smollm2, layer)
        assert sae.cfg.d_in == smollm2.info.d_model
    # the default kind has the skip connection, the plain kind none; both fit, the skip one better here
    plain = load_pretrained(smollm2, layer, kind="plain")[layer]
    assert isinstance(getattr(tc, "W_skip", None), torch.Tensor) and getattr(plain, "W_skip", None) is None
    with torch.no_grad():
        fvu_plain = ((plain(x) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert fvu < fvu_plain < 0.6
    with pytest.raises(InputError, match="kind must be"):
        load_pretrained(smollm2, layer, kind="sae")


def test_plain_saelens_error_names_the_import(tmp_path):
    """SAELens has no plugin mechanism: without ``import probes.transcoders`` loading a TopK
    transcoder fails, and the error (the architecture name) says what to import. Old names load."""
    import json
    import subprocess
    import sys

    from probes.transcoders.architectures import TOPK_ARCH
    tc = build_transcoder(8, 16, 8, "topk", k=2)
    save_transcoder(tc, tmp_path / "tc")
    assert json.loads((tmp_path / "tc" / "cfg.json").read_text())["architecture"] == TOPK_ARCH
    code = ("import sys; from sae_lens.saes.transcoder import Transcoder\n"
            "try:\n    Transcoder.load_from_disk(sys.argv[1])\nexcept KeyError as e:\n    print('KeyError', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tc")], capture_output=True, text=True,
                         timeout=300)
    assert "KeyError 'probes.transcoders:topk_transcoder'" in out.stdout, out.stdout + out.stderr
    # a folder saved under the earlier name still loads once the module is imported
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    cfg["architecture"] = "topk_transcoder"
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps(cfg))
    old = Transcoder.load_from_disk(str(tmp_path / "tc"))
    x = torch.randn(3, 8)
    assert torch.allclose(old(x), tc(x), atol=1e-6)
