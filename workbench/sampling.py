"""Batched, seeded text sampling with the underlying HF model (for building corpora).

``Model.generate`` runs one prompt at a time through the workbench KV cache, which is what
analyses of the cache need but is slow for producing thousands of documents. ``sample_texts``
batches prompts through HF ``generate`` (left padding, attention mask, KV cache) with no hooks
attached, and is deterministic for a given seed, batch size and prompt order: each batch draws
from its own generator state, seeded from ``(seed, batch index)``, so a run can be resumed batch
by batch and still give the same bytes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import InputError


def chat_prompt(model, user_message: str, system: str | None = None) -> str:
    """``user_message`` wrapped in the model's chat template, ending where the assistant starts.

    For models without a chat template the message is returned unchanged.
    """
    tok = model.tokenizer
    if not getattr(tok, "chat_template", None):
        return user_message
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_message}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def batch_seed(seed: int, batch_index: int) -> int:
    """The generator seed used for batch ``batch_index`` of a ``sample_texts`` call."""
    return (int(seed) * 1_000_003 + int(batch_index) * 7919) % (2**63 - 1)


@torch.no_grad()
def sample_texts(model, prompts: Sequence[str], max_new_tokens: int = 256, *, temperature: float = 0.8,
                 top_p: float = 0.95, repetition_penalty: float = 1.1, seed: int = 0, batch_size: int = 16,
                 first_batch: int = 0, on_batch=None) -> list[str]:
    """Sample one continuation per prompt; returns the generated text only (prompt excluded).

    prompts: raw strings (wrap them with ``chat_prompt`` for chat-formatted sampling); they are
    tokenized without extra special tokens. Generation stops at the tokenizer's EOS (for
    SmolLM2-Instruct ``<|im_end|>``) or after ``max_new_tokens``. Batches of ``batch_size`` are
    left-padded. first_batch: the index of the first batch (for resuming a longer list in pieces;
    the seed of batch i is ``batch_seed(seed, i)``). on_batch(i, texts): called after each batch.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise InputError("sample_texts() needs a non-empty list of non-empty prompt strings.")
    for name, v in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}.")
    if not temperature > 0 or not 0 < top_p <= 1 or not repetition_penalty > 0:
        raise InputError(f"Need temperature > 0, 0 < top_p <= 1 and repetition_penalty > 0; got {temperature}, "
                         f"{top_p}, {repetition_penalty}.")
    tok, hf = model.tokenizer, model.hf
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    out: list[str] = []
    for b, start in enumerate(range(0, len(prompts), batch_size), start=first_batch):
        chunk = prompts[start:start + batch_size]
        seqs = [tok(p, add_special_tokens=False)["input_ids"] for p in chunk]
        longest = max(len(s) for s in seqs)
        if longest + max_new_tokens > model.info.n_ctx:
            raise InputError(f"A prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the "
                             f"model's context of {model.info.n_ctx}.")
        ids = torch.full((len(seqs), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: every prompt ends where generation starts
            ids[i, longest - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, longest - len(s):] = 1
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(batch_seed(seed, b))
            gen = hf.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=True,
                              temperature=float(temperature), top_p=float(top_p), top_k=0,
                              repetition_penalty=float(repetition_penalty), max_new_tokens=max_new_tokens,
                              pad_token_id=pad, eos_token_id=eos)
        texts = []
        for row in gen[:, longest:].tolist():
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            texts.append(tok.decode(row, skip_special_tokens=False))
        out.extend(texts)
        if on_batch is not None:
            on_batch(b, texts)
    return out
