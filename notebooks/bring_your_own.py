# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bring your own model: a folder, a model object, a GGUF file
#
# The workbench wraps any causal LM that TransformerLens' `TransformerBridge` has an adapter for.
# This notebook shows the three ways a model arrives and checks each the same way:
#
# 1. **a local Hugging Face folder** (`save_pretrained` output: `config.json`, weights, tokenizer);
# 2. **a model object already in memory** (e.g. one you built or loaded yourself; its
#    `config.architectures` may be empty, as after loading a GGUF file: the class name is used);
# 3. **a GGUF file** (llama.cpp's format; transformers dequantizes it on load).
#
# For each: the **parity report** (the wrapped model's log-probabilities against the plain HF
# model's on a fixed probe, computed at load time), an independent logit comparison, the
# **architecture traits** the analyses read (`model.info`), and one analysis, **exact direct logit
# attribution** with its sum-to-logit check (it raises `workbench.DecompositionError` when the
# components miss the logit). Everything here runs offline on tiny random models of different
# families, so the numbers are about exactness, not about language. Use your own folder or GGUF
# path in the parameters cell to run it on a real model.
#
# What is exact on which family, and what refuses: `docs/core.md` (section "Model families").

# %% tags=["parameters"]
folder_family = "tiny-gemma2"  # family saved to a temporary folder (or set folder_path to your own)
folder_path = None  # a local HF checkpoint folder; None: save folder_family to a temporary folder
object_family = "tiny-neox"  # family built in memory and passed as a model object
gguf_path = None  # a local .gguf file; None: write the tiny Llama as GGUF to a temporary folder
prompt = "The capital of France is"
answer = " "  # a single-token answer for the DLA (the byte tokenizer: one character)
out_dir = "out/figures"  # where the figures go
export = True  # write the figures to out_dir at the end

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from IPython.display import display

import workbench as wb
from probes.factual import direct_logit_attribution
from workbench.loading.tiny import TINY_MODELS, build_tiny
from workbench.loading.tiny_gguf import write_tiny_gguf

t_start = time.perf_counter()
tmp = Path(tempfile.mkdtemp(prefix="bring_your_own_"))
figs = {}
loaded = {}


def independent_check(model, hf_reference, text=prompt):
    """Max |logit difference| between the wrapped model and a separately loaded HF model on ``text``."""
    ids, _ = model.tokenize(text)
    with torch.no_grad():
        ref = hf_reference(ids.to(model.device)).logits.float()
    return float((model.run(ids).logits.float() - ref).abs().max())


# %% [markdown]
# ## 1. A local Hugging Face folder
#
# `workbench.load(path)` reads `config.json`, the weights and the tokenizer from the folder
# (nothing is downloaded), wraps the model and checks parity. Here a tiny Gemma 2 (norms after
# attention and after the MLP, √d-scaled embeddings, sliding-window layers, logit soft-capping) is
# saved with `save_pretrained` first.

# %%
if folder_path is None:
    hf, tok = build_tiny(folder_family)
    folder_path = tmp / folder_family
    hf.save_pretrained(folder_path)
    tok.save_pretrained(folder_path)
m_folder = wb.load(folder_path, device="cpu")
loaded["folder"] = m_folder
print(m_folder.parity)
from transformers import AutoModelForCausalLM  # noqa: E402

hf_again = AutoModelForCausalLM.from_pretrained(folder_path, attn_implementation="eager").eval()
print(f"independent check against the folder loaded by transformers: max |Δ logit| = "
      f"{independent_check(m_folder, hf_again):.2e}")

# %% [markdown]
# ## 2. A model object already in memory
#
# `workbench.load(hf_model, tokenizer=tok)` wraps an object you hold. Its `config.architectures`
# is cleared here, as for a model loaded from a GGUF file: the workbench derives the architecture
# from the model class. The object keeps being yours: the wrapped model runs the same modules.

# %%
hf_obj, tok_obj = build_tiny(object_family)
hf_obj.config.architectures = None
m_object = wb.load(hf_obj, tokenizer=tok_obj, device="cpu")
loaded["object"] = m_object
print(m_object.parity, "| architecture derived from the class:", hf_obj.config.architectures)
ref_obj, _ = build_tiny(object_family)  # a separate copy with the same seed
print(f"independent check against a separate HF copy: max |Δ logit| = {independent_check(m_object, ref_obj):.2e}")

# %% [markdown]
# ## 3. A GGUF file
#
# `workbench.load("model.gguf")` hands the file to transformers' GGUF loader (which dequantizes
# the tensors to float32) and wraps the result. Here the tiny Llama is written as GGUF first; the
# loaded model must give the same logits as the model the file was written from.

# %%
if gguf_path is None:
    gguf_path = write_tiny_gguf(tmp / "tiny-llama.gguf")
m_gguf = wb.load(gguf_path, device="cpu")
loaded["gguf"] = m_gguf
print(m_gguf.parity)
if Path(gguf_path).parent == tmp:
    ref_llama, _ = build_tiny("tiny-llama")
    print(f"against the model the file was written from: max |Δ logit| = {independent_check(m_gguf, ref_llama):.2e}")

# %% [markdown]
# ## 4. Parity and traits, side by side
#
# `max_abs_logprob_diff` is the largest |Δ log-probability| between the wrapped model and plain HF
# on the probe sentence; `top1_agreement` the share of positions whose arg-max token agrees. The
# traits are what the analyses adapt to (see `docs/core.md`).

# %%
TRAITS = ["architecture", "n_layers", "n_heads", "n_kv_heads", "normalization", "positional", "rotary_dim",
          "post_norms", "qk_norm", "parallel_attn_mlp", "logit_softcap", "attn_softcap", "sliding_window"]
rows = []
for how, m in loaded.items():
    row = {"loaded from": how, "name": m.info.name, "parity |Δ logprob|": m.parity.max_abs_logprob_diff,
           "top-1 agreement": m.parity.top1_agreement}
    row.update({t: getattr(m.info, t) for t in TRAITS})
    rows.append(row)
parity_table = pd.DataFrame(rows)
display(parity_table)
assert all(m.parity.ok(1e-4) for m in loaded.values()), parity_table

# %% [markdown]
# ## 5. One analysis on each: exact DLA with its sum-to-logit check
#
# Direct logit attribution splits the answer's logit at the last position into embedding, heads,
# MLPs and biases. It is exact on every family: on Gemma the post-attention norm's scale is frozen
# at its clean-run value (as the final norm's is), so a head is read through that norm; with a
# logit soft-cap (Gemma 2) the decomposition is of the **pre-cap** logit (shown next to the capped
# one). Every call checks |Σ components − logit| against `rtol · max(1, Σ|components|)` and raises
# when it is exceeded; `error` and `tolerance` are printed here.

# %%
dla_rows = []
for how, m in loaded.items():
    r = direct_logit_attribution(m, prompt, answer=answer)
    dla_rows.append({"loaded from": how, "name": m.info.name, "logit (decomposed)": float(r.logits[0]),
                     "capped logit": None if r.capped_logits is None else float(r.capped_logits[0]),
                     "Σ components": float(r.total[0]), "|error|": r.error, "tolerance": r.tolerance,
                     "check passed": r.check_passed, **r.group_totals()})
    figs[f"dla_{how}"] = r.figure(title=f"DLA of {answer!r} on {m.info.name} (loaded from {how})")
dla_table = pd.DataFrame(dla_rows)
display(dla_table)
figs["dla_folder"]

# %% [markdown]
# ## 6. What the check catches
#
# A hook that adds a vector to the residual stream between components is something DLA does not
# model: the components no longer sum to the logit. With `on_error="warn"` the result comes back
# flagged (`check_passed=False`, and its repr says so) instead of raising.

# %%
push = torch.randn(m_folder.info.d_model, generator=torch.Generator().manual_seed(0))


class AddToResidual(wb.Intervention):
    def hooks(self, model):
        return [(wb.hook_name("resid_pre", model.info.n_layers - 1), lambda x, name: x + push)]


import warnings  # noqa: E402

with m_folder.intervene(AddToResidual()), warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    flagged = direct_logit_attribution(m_folder, prompt, answer=answer, on_error="warn")
print(flagged)
print("warnings:", [str(w.message)[:120] + "…" for w in caught])
try:
    with m_folder.intervene(AddToResidual()):
        direct_logit_attribution(m_folder, prompt, answer=answer)
except wb.DecompositionError as exc:
    print("raised by default:", str(exc)[:160], "…")

# %% [markdown]
# ## 7. Every tiny family
#
# The same traits for all the tiny families the workbench builds offline (one per architecture
# difference the analyses care about).

# %%
family_rows = []
for name in TINY_MODELS:
    m = m_folder if name == m_folder.info.name else wb.load(name, device="cpu")
    family_rows.append({"family": name, "parity": m.parity.max_abs_logprob_diff,
                        **{t: getattr(m.info, t) for t in TRAITS}})
display(pd.DataFrame(family_rows))

# %% [markdown]
# ## 8. Export the figures

# %%
if export:
    paths = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    display(pd.DataFrame({"file": [str(p) for p in paths]}))
print(f"bring_your_own finished in {time.perf_counter() - t_start:.1f} s (after imports)")
