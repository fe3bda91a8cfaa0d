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
# PyramidKV, key-norm, TOVA, random), **evict-then-merge**, and **KIVI quantization** (packed
# 8/4/2-bit codes). Every saving below is *physical*: `CacheStats.physical_bytes` counts the bytes
# of the tensors the cache really holds after the policy ran, next to the logical size of the
# entries it represents.
#
# This notebook runs every registered policy on a synthetic passkey-retrieval prompt (generated
# offline by `workbench.tasks`) and shows which tokens survive in each layer, whether the
# attention sink survives, the bytes, and whether the model still retrieves the key.

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct
passkey_tokens = 256  # prompt length in tokens
ratio = 0.5  # fraction of the cache each eviction policy removes
kivi_bits = [8, 4, 2]  # bit widths for KIVI quantization
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
from workbench.figures import find_browser
from workbench.tasks import passkey_prompts

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
# compressed cache. The table gives what was kept, the logical and physical bytes, and the answer.

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
    after_prefill = model.prefill(sample.prompt, cache_policy=get_policy(name, ratio=ratio))
    retained[name] = kept_positions(after_prefill)
    st = after_prefill.stats()
    rows.append({
        "policy": name, "kept tokens / layer (mean)": float(st.tokens.float().mean()),
        "sink (position 0) kept in all layers": all(bool((p == 0).any(-1).all()) for p in retained[name]),
        "logical MiB": st.logical_bytes / 2**20, "physical MiB": st.physical_bytes / 2**20,
        "kept fraction": st.compression, "answer": g.text, "correct": g.text.strip() == sample.answer.strip(),
    })
full_stats = model.prefill(sample.prompt).stats()
table = pd.DataFrame(rows)
print(f"full cache: {full_stats.physical_bytes / 2**20:.2f} MiB physical")
table

# %% [markdown]
# ## 3. Which tokens survive, layer by layer
#
# Retention map for each policy: for every layer (rows) and prompt position (columns), the
# fraction of KV heads that still hold that position. The needle's position is marked; position 0
# is the attention sink (SmolLM2 has no BOS token, so the first real token plays that role).

# %%
def retention_map(positions: list[torch.Tensor], n_tokens: int) -> torch.Tensor:
    """(L, T) fraction of KV heads of each layer that kept each position."""
    out = torch.zeros(len(positions), n_tokens)
    for l, p in enumerate(positions):
        for g in range(p.shape[0]):
            out[l, p[g][p[g] < n_tokens]] += 1 / p.shape[0]
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
# ## 5. Export

# %%
if export:
    formats = ("png", "html") if find_browser() else ("html",)
    written = wb.export_figures(figs, out_dir, formats=formats, include_plotlyjs="directory")
    print(f"wrote {len(written)} files to {out_dir}")
