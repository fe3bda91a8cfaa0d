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
# # KV-cache compression: what each policy keeps, what it saves, what it costs
#
# The KV cache grows by one key and one value per layer, KV head and token. The policies in
# `efficiency.kv` shrink it between steps: **eviction** (StreamingLLM, H2O, A2SF, SnapKV,
# PyramidKV, ZigZagKV, AdaKV, key-norm, TOVA, random, and the query-agnostic KVzip and HashEvict),
# **evict-then-merge** (merge, EMS), **KIVI quantization** (packed 8/4/2-bit codes) and **Lexico**
# (sparse codes over a learned dictionary). Every saving below is *physical*: `CacheStats.physical_bytes` counts the bytes
# of the tensors the cache really holds after the policy ran, next to the logical size of the
# entries it represents.
#
# This notebook runs every registered policy on a synthetic passkey-retrieval prompt (generated
# offline by `workbench.texts.tasks`) and shows which tokens survive in each layer, whether the
# attention sink survives, the bytes, and whether the model still retrieves the key. Sections 1-7
# compress prompt and question together (**query-aware**); section 8 compresses the context
# before the question is known (**query-agnostic**, how a deployed system works) and compares both.

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct
passkey_tokens = 256  # prompt length in tokens
ratio = 0.5  # fraction of the cache each eviction policy removes
kivi_bits = [8, 4, 2]  # bit widths for KIVI quantization
sweep_policies = ["streaming_llm", "snapkv", "h2o"]  # policies in the score-vs-ratio sweep
sweep_ratios = [0.25, 0.5, 0.75, 0.875]  # ratios of the sweep
n_sweep = 2  # samples per task (passkey and single needle) in the sweep
n_ppl_texts = 4  # bundled prose texts for the perplexity table
agnostic_policies = ["kvzip", "hashevict", "ems", "key_norm", "snapkv", "streaming_llm"]  # section 8
agnostic_ratio = 0.75  # fraction removed in the query-agnostic comparison
n_agnostic = 2  # passkey samples in the query-aware vs query-agnostic sweep
lexico_sparsities = [8, 14]  # Lexico settings compared with KIVI (section 9; SmolLM2's shipped dictionary)
out_dir = "out/figures"
export = True

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import display

import workbench as wb
from efficiency import POLICIES, ScorePolicy, get_policy
from workbench.texts.tasks import passkey_prompts

figs = {}
model = wb.load(model_name)
model

# %% [markdown]
# ## 1. A passkey prompt
#
# Filler text with one sentence "The pass key is NNNNN. Remember it." in the middle, and the
# question at the end. The full cache answers it; the question is which compressed caches still do.

# %%
sample = passkey_prompts(model, n=1, n_tokens=passkey_tokens, depth=0.5, seed=0)[0]
print(f"{sample.n_tokens} tokens, key {sample.answer!r} at token {sample.needle_position}")
print(sample.prompt[:300], "...", sample.prompt[-120:])
n_answer = len(sample.answer_token_ids)
full = model.generate(sample.prompt, max_new_tokens=n_answer)
print("full cache answers:", repr(full.text), "| correct:", full.text.strip() == sample.answer.strip())

# %% [markdown]
# ## 2. Every eviction policy at the same ratio
#
# Each policy prefills once, removes `ratio` of the cache, then decodes the answer against the
# compressed cache. The table gives what was kept and the logical and physical bytes right after
# prefill, and the answer.

# %%
def kept_positions(cache) -> list[torch.Tensor]:
    """Per layer, the (G, N) original positions of the retained entries of prompt 0."""
    return [p[0] for p in cache.positions]


rows, retained = [], {}
for name, cls in sorted(POLICIES.items()):
    if not issubclass(cls, ScorePolicy):
        continue  # quantizers are below
    policy = get_policy(name, ratio=ratio)
    g = model.generate(sample.prompt, max_new_tokens=n_answer, cache_policy=policy)
    retained[name] = kept_positions(g.cache)  # after the answer was decoded (prompt positions < n_tokens)
    st = g.cache_stats[0]  # right after prefill and the policy
    rows.append({
        "policy": name, "kept tokens / layer (mean)": float(st.tokens.float().mean()),
        "sink (position 0) kept in all layers": all(bool((p == 0).any(-1).all()) for p in retained[name]),
        "logical MiB": st.logical_bytes / 2**20, "physical MiB": st.physical_bytes / 2**20,
        "kept fraction": st.compression, "answer": g.text, "correct": g.text.strip() == sample.answer.strip(),
    })
full_stats = full.cache_stats[0]
table = pd.DataFrame(rows)
print(f"full cache: {full_stats.physical_bytes / 2**20:.2f} MiB physical")
table

# %% [markdown]
# ## 3. Which tokens survive, layer by layer
#
# Retention map for each policy: for every layer (rows) and prompt position (columns), the
# fraction of KV heads that still hold that position once the answer is decoded (TOVA keeps
# evicting while decoding; the others evict at prefill). The needle's position is marked; position 0
# is the attention sink (SmolLM2 has no BOS token, so the first real token plays that role).

# %%
def retention_map(positions: list[torch.Tensor], n_tokens: int) -> torch.Tensor:
    """(L, T) fraction of KV heads of each layer that kept each position."""
    out = torch.zeros(len(positions), n_tokens)
    for l, p in enumerate(positions):
        for g in range(p.shape[0]):
            out[l, p[g][(p[g] >= 0) & (p[g] < n_tokens)]] += 1 / p.shape[0]  # -1: padding of a ragged layer
    return out


for name in ("streaming_llm", "snapkv", "h2o"):
    if name not in retained:
        continue
    m = retention_map(retained[name], sample.n_tokens)
    fig = go.Figure(go.Heatmap(z=m.numpy(), colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="kept")))
    fig.add_vline(x=sample.needle_position, line_color="red", annotation_text="needle")
    fig.update_layout(title=f"{name}: retained positions at ratio {ratio}", xaxis_title="prompt position",
                      yaxis_title="layer", height=420, template="plotly_white")
    figs[f"retention_{name}"] = fig
    display(fig)

# %% [markdown]
# ## 4. KIVI quantization: packed codes, a full-precision recent window
#
# Keys are quantized per channel, values per token; the newest tokens stay in full precision.
# The physical bytes are those of the packed uint8 codes plus scales, mins and the residual
# window; `kivi_bytes_formula` predicts them exactly. Quantization saves memory, not time: every
# step dequantizes the cache on CPU.

# %%
qrows = []
for bits in kivi_bits:
    policy = get_policy("kivi", bits=bits)
    g = model.generate(sample.prompt, max_new_tokens=n_answer, cache_policy=policy)
    st = g.cache_stats[-1]
    qrows.append({"bits": bits, "logical MiB": st.logical_bytes / 2**20, "physical MiB": st.physical_bytes / 2**20,
                  "physical / fp32": st.physical_bytes / st.logical_bytes, "answer": g.text,
                  "correct": g.text.strip() == sample.answer.strip()})
qtable = pd.DataFrame(qrows)
qtable

# %%
fig = go.Figure()
fig.add_bar(x=table["policy"], y=table["physical MiB"], name=f"eviction at ratio {ratio}",
            marker_color=["#2a7" if c else "#c33" for c in table["correct"]])
fig.add_bar(x=[f"kivi {b}-bit" for b in qtable["bits"]], y=qtable["physical MiB"], name="KIVI",
            marker_color=["#2a7" if c else "#c33" for c in qtable["correct"]])
fig.add_hline(y=full_stats.physical_bytes / 2**20, line_dash="dash", annotation_text="full cache")
fig.update_layout(title="Physical KV-cache bytes per policy (green: passkey retrieved, red: missed)",
                  yaxis_title="MiB", template="plotly_white", showlegend=False)
figs["cache_bytes"] = fig
fig

# %% [markdown]
# ## 4b. Per-head budgets stored ragged (AdaKV), per-layer budgets from uncertainty (ZigZagKV)
#
# **AdaKV** gives each KV head of a layer its own budget: the layer keeps the same total as a
# uniform policy, but the best SnapKV scores across *all* its heads win (each head keeps at least
# `alpha` of the average). kvpress does this by masking, so nothing is freed; here the layer is
# stored **ragged** (`RaggedLayer`: each head's entries packed, no padding at rest), so the physical
# bytes equal the entries kept. The attention reads a transient padded view with the padding
# masked per head.
#
# **ZigZagKV** gives each *layer* a budget proportional to how many keys it needs to hold 90% of
# its attention on the prompt (`UncertaintyBudgets`), instead of PyramidKV's fixed linear schedule.

# %%
from efficiency.kv import AdaKV, SnapKV, ZigZagKV, ragged_bytes_formula

ada_cache = model.prefill(sample.prompt, cache_policy=AdaKV(ratio=ratio))
uni_cache = model.prefill(sample.prompt, cache_policy=SnapKV(ratio=ratio))
ada_st, uni_st = ada_cache.stats(), uni_cache.stats()
print(f"ragged layers: {sum(ada_cache.is_ragged(l) for l in range(ada_cache.n_layers))} of {ada_cache.n_layers}")
print(f"AdaKV physical {ada_st.physical_bytes / 2**20:.3f} MiB = formula {ragged_bytes_formula(ada_cache) / 2**20:.3f} MiB; "
      f"uniform SnapKV {uni_st.physical_bytes / 2**20:.3f} MiB; full {full_stats.physical_bytes / 2**20:.3f} MiB")
fig = go.Figure(go.Heatmap(z=ada_st.tokens.numpy(), colorscale="Viridis", colorbar=dict(title="entries")))
fig.update_layout(title=f"AdaKV at ratio {ratio}: entries kept per layer and KV head (uniform: "
                        f"{int(uni_st.tokens[0, 0])} each)", xaxis_title="KV head", yaxis_title="layer", height=420,
                  template="plotly_white")
figs["adakv_head_budgets"] = fig
display(fig)

zz = ZigZagKV(ratio=ratio)
zz_cache = model.prefill(sample.prompt, cache_policy=zz)
need = [zz.layer_budgets.need[l] for l in range(model.info.n_layers)]
pyr_cache = model.prefill(sample.prompt, cache_policy=get_policy("pyramidkv", ratio=ratio))
fig = go.Figure()
fig.add_bar(x=list(range(model.info.n_layers)), y=[zz_cache.seq_len(l) for l in range(model.info.n_layers)],
            name="ZigZagKV budget")
fig.add_scatter(x=list(range(model.info.n_layers)), y=[pyr_cache.seq_len(l) for l in range(model.info.n_layers)],
                name="PyramidKV budget", mode="lines")
fig.add_scatter(x=list(range(model.info.n_layers)), y=need, name="keys for 90% attention (measured)",
                mode="lines+markers", yaxis="y2")
fig.update_layout(title=f"Per-layer budgets at ratio {ratio} (same total)", xaxis_title="layer",
                  yaxis_title="entries kept", yaxis2=dict(overlaying="y", side="right", title="keys for 90%"),
                  template="plotly_white")
figs["zigzag_layer_budgets"] = fig
fig

# %% [markdown]
# ## 5. What eviction does inside the model
#
# The tables above judge a policy by its answer. `efficiency.kv.internals.compare_cache` looks
# inside: it prefills the prompt into a full cache and into a compressed one, feeds both the same
# next token (the full cache's greedy choice) and captures each layer's attention row for that
# query. The compressed row is mapped back onto the original positions (evicted positions get 0),
# so per layer and head we get the total variation distance to the full cache's attention, the
# attention mass the full cache put on what was evicted, whether the sink (position 0) survived,
# and how much the next-token distribution moved (KL, top-1, top-5).

# %%
from efficiency.kv.explorer import kv_compare_explorer
from efficiency.kv.internals import compare_cache, full_reference

reference = full_reference(model, sample.prompt)  # the full cache's side, shared by every policy
comparisons = {name: compare_cache(model, sample.prompt, name, ratio=ratio, reference=reference)
               for name in ("streaming_llm", "snapkv", "random")}
internals = pd.DataFrame([c.metrics() for c in comparisons.values()])
internals

# %% [markdown]
# Retention map of one policy (hover for the token), the layer × head divergence of each, and the
# next-token output of both caches for each policy.

# %%
figs["internals_retention_snapkv"] = comparisons["snapkv"].figure("retention")
display(figs["internals_retention_snapkv"])
for name, c in comparisons.items():
    figs[f"internals_divergence_{name}"] = c.figure("divergence")
    figs[f"internals_output_{name}"] = c.figure("output")
    display(figs[f"internals_divergence_{name}"])
    display(figs[f"internals_output_{name}"])

# %% [markdown]
# ### Interactive comparison
#
# Choose a policy and a ratio: the retention map, the attention divergence and the output of both
# caches update in place. Each (policy, ratio) is computed the first time it is shown.

# %%
kv_explorer = kv_compare_explorer(model, sample.prompt, policies=["streaming_llm", "snapkv", "h2o", "random"],
                                  max_tokens=max(256, sample.n_tokens))
kv_explorer.show("snapkv", 0.5)
kv_explorer

# %% [markdown]
# ## 6. A sweep: score versus compression ratio
#
# `efficiency.sweep` prefills each sample **once** (the attention every policy needs is fed to it
# during that one forward), then for every policy and ratio compresses a copy of the cache and
# decodes the answer from it, exactly as `generate(..., cache_policy=...)` would. The samples are
# passkey prompts and RULER-style single needles ("The magic number for KEY is 1234567.").
# Score: exact match of the greedy answer. The dashed line is the full cache's score.

# %%
from efficiency import perplexity, sweep
from workbench.texts import load_domain
from workbench.texts.tasks import needle_prompts

sweep_samples = (passkey_prompts(model, n=n_sweep, n_tokens=passkey_tokens, seed=1)
                 + needle_prompts(model, n=n_sweep, n_tokens=max(passkey_tokens, 96), kind="single", seed=1))
sweep_result = sweep(model, sweep_samples, sweep_policies, ratios=sweep_ratios)
figs["sweep_score_vs_ratio"] = sweep_result.figure()
display(sweep_result)
figs["sweep_score_vs_ratio"]

# %% [markdown]
# ## 7. Perplexity with a compressed prefix
#
# `efficiency.perplexity` prefills the first half of each bundled prose text, lets the policy
# compress that cache (ratio 0.5), then scores the second half teacher-forced in one cached
# forward. Without a policy it equals the ordinary perplexity of those tokens. The first scored
# token is predicted from the full prefix (before compression).

# %%
ppl_texts = load_domain("prose")[:n_ppl_texts]
ppl_rows = []
for label, pol in [("full cache", None), ("streaming_llm 0.5", get_policy("streaming_llm", ratio=0.5)),
                   ("snapkv 0.5", get_policy("snapkv", ratio=0.5))]:
    r = perplexity(model, ppl_texts, pol)
    ppl_rows.append({"policy": label, "perplexity": r.perplexity, "scored tokens": r.n_scored,
                     "prefix kept": float(r.per_text.kept_fraction.mean())})
ppl_table = pd.DataFrame(ppl_rows)
ppl_table

# %% [markdown]
# ## 8. Not knowing the question: compress once, ask many (query-agnostic)
#
# Everything above is **query-aware**: the prompt handed to the policy already ends with the
# question, so a policy that scores from the last tokens' attention (SnapKV's observation window)
# sees what will be asked. A deployed system compresses a context when it arrives and answers
# questions it did not know then. `workbench.compress_context` does that: it prefills the context,
# compresses it once, and `ask()` feeds each question against the compressed cache (the answer is
# removed again afterwards, so every question sees the same compressed context). Policies that
# score from attention then score from the context alone: their observation window is the end of
# the context.
#
# KVzip is built for this setting: it scores every entry by the largest attention it receives
# while the model *repeats the context* ("Repeat the previous context exactly."), which costs about
# one more prefill.

# %%
from efficiency.kv import KVzip
from workbench.texts.tasks import split_ids

ctx_ids, q_ids = split_ids(model, sample)
kz = wb.compress_context(model, ctx_ids, KVzip(ratio=agnostic_ratio))
a1 = kz.ask(q_ids, max_new_tokens=n_answer)
a2 = kz.ask(" In one word, what colour is the grass?", max_new_tokens=3)
display(kz)
print("passkey answer:", repr(a1.text), "| second question:", repr(a2.text))
figs["agnostic_kvzip_retention"] = kz.figure()
figs["agnostic_kvzip_retention"]

# %% [markdown]
# The same passkey samples in both settings, every row labelled with its setting (dashed lines:
# query-agnostic). The gap between the two lines of a policy is what knowing the question was worth.

# %%
agn_samples = passkey_prompts(model, n=n_agnostic, n_tokens=passkey_tokens, seed=7)
both = sweep(model, agn_samples, agnostic_policies, ratios=[agnostic_ratio], query_aware="both")
figs["query_aware_vs_agnostic"] = both.figure()
display(both)
both.table()

# %% [markdown]
# ## 9. Lexico: sparse codes over a learned dictionary, against KIVI at similar bytes
#
# Lexico stores every key and value older than a 128-token full-precision buffer as `s` indices
# (int16) and `s` coefficients (fp16) over its layer's dictionary, learned offline on the bundled
# corpus (`scripts/build_lexico.py`; the SmolLM2 dictionary ships with the package). Its bytes
# follow `lexico_bytes_formula` exactly, like KIVI's packed codes follow `kivi_bytes_formula`.

# %%
from efficiency.kv import LexicoCompression, LexicoDictionary

try:
    LexicoDictionary.for_model(model)
    has_dictionary = True
except wb.InputError as e:
    has_dictionary = False
    print(e)
lrows = []
if has_dictionary:
    full_bytes = wb.compress_context(model, ctx_ids).stats.physical_bytes
    candidates = [LexicoCompression(sparsity=s) for s in lexico_sparsities] + [get_policy("kivi", bits=b)
                                                                               for b in (2, 4)]
    for pol in candidates:
        c = wb.compress_context(model, ctx_ids, pol)
        ans = c.ask(q_ids, max_new_tokens=n_answer)
        lrows.append({"policy": pol.name, "bytes / full": c.stats.physical_bytes / full_bytes, "answer": ans.text,
                      "correct": ans.text.strip() == sample.answer.strip()})
pd.DataFrame(lrows)

# %% [markdown]
# ## 10. Export

# %%
if export:
    written = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    print(f"wrote {len(written)} files to {out_dir}")
