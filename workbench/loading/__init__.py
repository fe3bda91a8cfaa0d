"""``workbench.load``: the bundled SmolLM2, tiny random models, or your own HF model."""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from ..errors import InputError, ModelLoadError
from ..model import Model, ModelInfo, ParityReport
from . import smollm2, tiny

PARITY_PROBE = "The capital of France is Paris. Water freezes at zero degrees Celsius, and"


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"Unsupported device {device!r} ({exc}). Use 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {device!r} was requested but CUDA is not available on this machine. "
                             "Use device='cpu' (or leave device=None to pick automatically).")
    if dev.type not in ("cpu", "cuda"):  # same error type as an unparseable name ('tpu') above
        raise InputError(f"Unsupported device {device!r}: the workbench runs on 'cpu' or 'cuda'.")
    return dev


def fingerprint(hf) -> str:
    """A short hash of the config and a strided sample of every weight (cheap, order-sensitive)."""
    h = hashlib.sha256(json.dumps(hf.config.to_dict(), sort_keys=True, default=str).encode())
    for name, p in hf.state_dict().items():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def _info(hf, bridge, name: str) -> ModelInfo:
    c, b = hf.config, bridge.cfg
    n_kv = getattr(c, "num_key_value_heads", None) or b.n_heads
    rope = getattr(c, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    inv_freq = next((buf for n, buf in hf.named_buffers()
                     if n.endswith("inv_freq") and "original" not in n.rsplit(".", 1)[-1] and buf.ndim == 1), None)
    blk = bridge.blocks[0]
    hf_attn = blk.attn._modules.get("_original_component", blk.attn)
    types = tuple(getattr(c, "layer_types", None) or ()) or None
    if types is not None and "sliding_attention" not in types:
        types = None  # every layer global: nothing to flag
    return ModelInfo(
        name=name, architecture=type(hf).__name__, n_layers=b.n_layers, n_heads=b.n_heads, n_kv_heads=n_kv,
        d_model=b.d_model, d_head=b.d_head, d_mlp=b.d_mlp, d_vocab=b.d_vocab,
        n_ctx=int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or b.n_ctx),
        normalization=str(b.normalization_type), positional=str(b.positional_embedding_type),
        rope_theta=theta or getattr(c, "rope_theta", None),
        logit_softcap=getattr(c, "final_logit_softcapping", None) or None,
        attn_softcap=getattr(c, "attn_logit_softcapping", None) or None,
        parallel_attn_mlp=bool(getattr(b, "parallel_attn_mlp", False) or getattr(c, "use_parallel_residual", False)),
        post_norms="ln1_post" in blk._modules or "ln2_post" in blk._modules,
        qk_norm="q_norm" in getattr(hf_attn, "_modules", {}),
        rotary_dim=None if inv_freq is None else 2 * int(inv_freq.numel()),
        sliding_window=getattr(c, "sliding_window", None) if types else None,
        layer_types=types,
    )


def _hf_reference(hf, tok, device):
    ids = torch.tensor([tok(PARITY_PROBE, add_special_tokens=True)["input_ids"][:64]], device=device)
    with torch.no_grad():
        return ids, torch.log_softmax(hf(ids).logits.float(), -1)


def _supported_architectures() -> list[str]:
    try:
        from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    except ImportError:  # an older TransformerLens layout
        return []
    return sorted(SUPPORTED_ARCHITECTURES)


def _ensure_architecture(hf) -> str:
    """The architecture name TransformerBridge picks an adapter by. Models built from a config or loaded
    from a GGUF file have ``config.architectures`` empty; the model class says what it is."""
    archs = list(getattr(hf.config, "architectures", None) or [])
    if not archs:
        hf.config.architectures = [type(hf).__name__]
        archs = hf.config.architectures
    return archs[0]


def _wrap_error(hf, arch: str, exc: Exception) -> ModelLoadError:
    supported = _supported_architectures()
    if arch not in supported and supported:
        close = difflib.get_close_matches(arch, supported, n=3, cutoff=0.6)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        return ModelLoadError(f"TransformerLens {_tl_version()} has no adapter for {arch} (model_type "
                              f"{getattr(hf.config, 'model_type', None)!r}), so the workbench cannot wrap it.{hint} "
                              f"{len(supported)} architectures are supported; list them with "
                              "workbench.loading.supported_architectures().")
    first = str(exc).split("\n")[0][:300]
    return ModelLoadError(f"TransformerLens could not wrap {arch} ({type(exc).__name__}: {first}).")


def _tl_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def supported_architectures() -> list[str]:
    """HF architecture names TransformerBridge (and so the workbench) can wrap."""
    return _supported_architectures()


def wrap(hf, tokenizer, name: str | None = None, device=None, check_parity: bool = True,
         dtype: torch.dtype | None = None) -> Model:
    """Wrap an already-loaded HF causal LM and its tokenizer (eager attention is switched on).

    dtype: convert the weights (e.g. torch.bfloat16 on a GPU); None keeps the model's dtype.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if not hasattr(hf, "config") or not callable(hf):
        raise ModelLoadError(f"Expected a transformers causal LM, got {type(hf).__name__}.")
    if getattr(hf.config, "_attn_implementation", "eager") != "eager":
        hf.config._attn_implementation = "eager"  # attention patterns are only hookable in eager
    dev = _resolve_device(device)
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise InputError(f"dtype must be a floating torch dtype (torch.float32, torch.bfloat16, torch.float16), "
                             f"got {dtype!r}.")
        hf = hf.to(dtype)
    hf = hf.to(dev).eval()
    arch = _ensure_architecture(hf)
    ref = _hf_reference(hf, tokenizer, dev) if check_parity else None
    name = name or Path(str(getattr(hf.config, "name_or_path", "") or "")).name or type(hf).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # a neutral name: TransformerLens resolves known aliases ("gpt2", "neox") to hub names
            bridge = TransformerBridge.boot_transformers(f"workbench-local/{name}", hf_model=hf, tokenizer=tokenizer,
                                                         device=str(dev), dtype=next(hf.parameters()).dtype)
    except Exception as exc:
        raise _wrap_error(hf, arch, exc) from exc
    bridge.cfg.default_prepend_bos = False  # we tokenize ourselves; never let TL add a BOS
    parity = None
    if ref is not None:
        ids, ref_lp = ref
        with torch.no_grad():
            lp = torch.log_softmax(bridge(ids, return_type="logits").float(), -1)
        parity = ParityReport((lp - ref_lp).abs().max().item(),
                              (lp.argmax(-1) == ref_lp.argmax(-1)).float().mean().item(), ids.shape[1], PARITY_PROBE)
    return Model(hf, tokenizer, bridge, _info(hf, bridge, name), fingerprint(hf), parity, dev)


def load(source=None, *, device=None, tokenizer=None, check_parity: bool = True, seed: int = 0,
         dtype: torch.dtype | None = None) -> Model:
    """Load a model and wrap it.

    source: None or "smollm2" for the bundled SmolLM2-135M-Instruct (fp32, cached after the first
        load); a tiny random model name (``workbench.loading.tiny.TINY_MODELS``: tiny-llama, tiny-gpt2,
        tiny-gemma2, tiny-gemma3, tiny-qwen2, tiny-qwen3, tiny-neox); a local HF checkpoint folder; a
        local ``.gguf`` file (dequantized by transformers); or an already-loaded HF causal LM (pass its
        ``tokenizer=``).
    device: "cpu", "cuda" or None (CUDA when available). dtype: e.g. torch.bfloat16 to halve the
        weights on a GPU (None: fp32 for the bundled, tiny and GGUF models, the checkpoint's own dtype
        for folders and model objects).
    """
    _resolve_device(device)  # refuse a bad device before spending seconds building/loading a model
    if source is None or (isinstance(source, str) and source.lower() in smollm2.ALIASES):
        hf, tok, _ = smollm2.load_smollm2()
        return wrap(hf, tok, smollm2.NAME, device, check_parity, dtype)
    if isinstance(source, str) and source in tiny.TINY_MODELS:
        hf, tok = tiny.build_tiny(source, seed=seed)
        return wrap(hf, tok, source, device, check_parity, dtype)
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return _load_folder(Path(source), device, check_parity, dtype)
    if isinstance(source, (str, Path)) and str(source).lower().endswith(".gguf"):
        return _load_gguf(Path(source), device, check_parity, dtype)
    if isinstance(source, torch.nn.Module):
        if tokenizer is None:
            raise ModelLoadError("Pass the model's tokenizer: workbench.load(hf_model, tokenizer=tok).")
        return wrap(source, tokenizer, None, device, check_parity, dtype)
    if isinstance(source, (str, Path)):
        raise ModelLoadError(
            f"Unknown model {str(source)!r}: not a bundled name, a local folder or a .gguf file. Use load() for "
            f"SmolLM2-135M-Instruct, one of {tiny.TINY_MODELS}, a local HF checkpoint folder or a GGUF file "
            "(nothing is downloaded from a hub)."
        )
    raise ModelLoadError(f"load() takes a name, a folder, a .gguf file or a HF model, not {type(source).__name__}.")


def _load_gguf(path: Path, device, check_parity, dtype) -> Model:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                  attn_implementation="eager")
    except Exception as exc:
        first = str(exc).split("\n")[0][:300]
        raise ModelLoadError(f"transformers cannot read the GGUF file {path.name} ({type(exc).__name__}: {first}). "
                             "It dequantizes GGUF files of the architectures and quantization types its GGUF loader "
                             "supports (see transformers' GGUF documentation); convert others to a HF folder first.") \
            from exc
    smollm2.strip_gguf_marks(hf)
    return wrap(hf, tok, path.stem, device, check_parity, dtype)


def _load_folder(path: Path, device, check_parity, dtype=None) -> Model:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a HF checkpoint folder (no config.json).")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    except Exception as exc:
        raise ModelLoadError(f"Could not load the checkpoint in {path}: {type(exc).__name__}: {exc}") from exc
    return wrap(hf, tok, path.name, device, check_parity, dtype)
