"""``workbench.load``: the bundled SmolLM2, tiny random models, or your own HF model."""
from __future__ import annotations

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
    return ModelInfo(
        name=name, architecture=type(hf).__name__, n_layers=b.n_layers, n_heads=b.n_heads, n_kv_heads=n_kv,
        d_model=b.d_model, d_head=b.d_head, d_mlp=b.d_mlp, d_vocab=b.d_vocab,
        n_ctx=int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or b.n_ctx),
        normalization=str(b.normalization_type), positional=str(b.positional_embedding_type),
        rope_theta=theta or getattr(c, "rope_theta", None),
    )


def _hf_reference(hf, tok, device):
    ids = torch.tensor([tok(PARITY_PROBE, add_special_tokens=True)["input_ids"][:64]], device=device)
    with torch.no_grad():
        return ids, torch.log_softmax(hf(ids).logits.float(), -1)


def wrap(hf, tokenizer, name: str | None = None, device=None, check_parity: bool = True) -> Model:
    """Wrap an already-loaded HF causal LM (fp32, eager attention recommended) and its tokenizer."""
    from transformer_lens.model_bridge import TransformerBridge

    if not hasattr(hf, "config") or not callable(hf):
        raise ModelLoadError(f"Expected a transformers causal LM, got {type(hf).__name__}.")
    if getattr(hf.config, "_attn_implementation", "eager") != "eager":
        hf.config._attn_implementation = "eager"  # attention patterns are only hookable in eager
    dev = _resolve_device(device)
    hf = hf.to(dev).eval()
    ref = _hf_reference(hf, tokenizer, dev) if check_parity else None
    name = name or getattr(hf.config, "name_or_path", None) or type(hf).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tokenizer, device=str(dev))
    except Exception as exc:
        raise ModelLoadError(f"TransformerLens cannot wrap {type(hf).__name__} ({type(exc).__name__}: {exc}). "
                             "Use an architecture TransformerBridge supports (Llama, GPT-2, Qwen, Gemma, ...).") from exc
    bridge.cfg.default_prepend_bos = False  # we tokenize ourselves; never let TL add a BOS
    parity = None
    if ref is not None:
        ids, ref_lp = ref
        with torch.no_grad():
            lp = torch.log_softmax(bridge(ids, return_type="logits").float(), -1)
        parity = ParityReport((lp - ref_lp).abs().max().item(),
                              (lp.argmax(-1) == ref_lp.argmax(-1)).float().mean().item(), ids.shape[1], PARITY_PROBE)
    return Model(hf, tokenizer, bridge, _info(hf, bridge, name), fingerprint(hf), parity, dev)


def load(source=None, *, device=None, tokenizer=None, check_parity: bool = True, seed: int = 0) -> Model:
    """Load a model and wrap it.

    source: None or "smollm2" for the bundled SmolLM2-135M-Instruct (fp32, cached after the first
        load); "tiny-llama" / "tiny-gpt2" for seeded random tiny models; a local HF checkpoint
        folder; or an already-loaded HF causal LM (pass its ``tokenizer=``).
    device: "cpu", "cuda" or None (CUDA when available).
    """
    _resolve_device(device)  # refuse a bad device before spending seconds building/loading a model
    if source is None or (isinstance(source, str) and source.lower() in smollm2.ALIASES):
        hf, tok, _ = smollm2.load_smollm2()
        return wrap(hf, tok, smollm2.NAME, device, check_parity)
    if isinstance(source, str) and source in tiny.TINY_MODELS:
        hf, tok = tiny.build_tiny(source, seed=seed)
        return wrap(hf, tok, source, device, check_parity)
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return _load_folder(Path(source), device, check_parity)
    if isinstance(source, torch.nn.Module):
        if tokenizer is None:
            raise ModelLoadError("Pass the model's tokenizer: workbench.load(hf_model, tokenizer=tok).")
        return wrap(source, tokenizer, None, device, check_parity)
    if isinstance(source, (str, Path)):
        raise ModelLoadError(
            f"Unknown model {str(source)!r}: not a bundled name and not a local folder. Use load() for "
            f"SmolLM2-135M-Instruct, one of {tiny.TINY_MODELS}, or the path of a local HF checkpoint folder "
            "(nothing is downloaded from a hub)."
        )
    raise ModelLoadError(f"load() takes a name, a folder or a HF model, not {type(source).__name__}.")


def _load_folder(path: Path, device, check_parity) -> Model:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} is not a HF checkpoint folder (no config.json).")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    except Exception as exc:
        raise ModelLoadError(f"Could not load the checkpoint in {path}: {type(exc).__name__}: {exc}") from exc
    return wrap(hf, tok, path.name, device, check_parity)
