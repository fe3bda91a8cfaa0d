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
# # Activation sparsity, layer pruning, low rank and latent attention: savings and insides
#
# Four families of efficiency methods on SmolLM2-135M, each an efficiency method of `efficiency`
# (registered by name, installed as an exactly-restored intervention):
#
# - **layer pruning**: ShortGPT (Block Influence), SLEB (greedy by perplexity), attention-layer dropping
#   by similarity, LaCo (merging blocks), TrimLLM without fine-tuning (progressive, scored on facts);
# - **activation sparsity**: TEAL (magnitude thresholds on every projection input, a gather-GEMV path);
# - **low rank**: LASER (one matrix at low rank, swept on facts), SVD-LLM (whitened truncated SVD);
# - **MHA to MLA**: partial RoPE plus a joint key/value latent, with a latent KV cache.
#
# Calibration uses the bundled corpus's Python-documentation source; quality is measured on the
# WordNet-gloss source (no shared source) and on the fact prompts. Sizes here are small so the
# notebook runs in minutes; `benchmarks/bench_sparsity_pruning.py --mode full` runs the full study.

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct
n_calib_windows = 2  # calibration windows (of calib_window tokens)
calib_window = 96
ppl_tokens = 256  # tokens per held-out perplexity window
n_ppl = 1  # held-out windows
ratios = [0.1]  # fractions of the blocks removed
facts_per_relation = 3  # fact prompts per relation (half to select on, half held out)
teal_sparsity = 0.5
mla_dkv = [8, 32]  # latent sizes of the MHA2MLA conversion (rope_dims 8)
laser_layers = [24, 27]  # LASER sweep: layers
laser_rhos = [0.05, 0.2]  # LASER sweep: kept rank fractions
run_sleb = True  # SLEB's greedy search (about ratio x L x L forward passes on the calibration windows)
out_dir = "out/figures"
export = True

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import pandas as pd
import torch
from IPython.display import display

import efficiency as ef
import workbench as wb
from efficiency.kv.harness import perplexity
from workbench.texts import long_texts
from efficiency.lowrank import FactScorer, laser_sweep, lowrank_explorer
from efficiency.mla import mla_attention_effect, mla_explorer, mla_report
from efficiency.pruning import layer_scores, massive_activation_effect, pruning_explorer
from efficiency.sparsity import calibrate_teal, measured_sparsity, sparsity_explorer
from efficiency.calibration import token_windows
from probes.factual import load_facts
from probes.transcoders import load_corpus
from workbench.texts.tasks import passkey_prompts, score_passkey

torch.set_grad_enabled(False)
figs = {}
model = wb.load(model_name)
calib = load_corpus("train", sources=["python-docs"])
gloss = "\n\n".join(load_corpus("all", sources=["wordnet"]))
held_out = long_texts(model, n_ppl, ppl_tokens, corpus=gloss)
facts = list(load_facts().sample(facts_per_relation, seed=0))
half = len(facts) // 2
select_facts, eval_facts = facts[:half], facts[half:]
score_eval = FactScorer(model, [f.prompt for f in eval_facts], [f.answer for f in eval_facts])
score_select = FactScorer(model, [f.prompt for f in select_facts], [f.answer for f in select_facts])
calib_kw = dict(window=calib_window, n_windows=n_calib_windows)


def quality(*interventions) -> dict:
    """Held-out perplexity (second half of each window) and held-out fact accuracy."""
    with model.intervene(*interventions):
        return {"perplexity": perplexity(model, held_out).perplexity, "fact_acc": score_eval(model).accuracy}


base_quality = quality()
model, base_quality

# %% [markdown]
# ## 1. Which blocks matter: Block Influence with and without position 0
#
# Block Influence is one minus the mean cosine between a block's input and output residual. The first
# token of every window carries the model's massive activation; its cosine is close to 1 in the blocks
# that carry it and very low in the block that writes it, so short calibration windows weigh it heavily.

# %%
scores = layer_scores(model, token_windows(model, calib, calib_window, n_calib_windows), label="calibration")
figs["pruning_block_influence"] = scores.figure()
scores.to_frame()[["layer", "bi", "bi_no_first", "attn_sim", "mlp_sim"]].round(4).T

# %% [markdown]
# ## 2. The massive activation: which block writes it, and what dropping or sparsifying does to it

# %%
probe = held_out[0][:600]
teal = ef.TEAL(sparsity=teal_sparsity, calibration=calibrate_teal(model, calib, **calib_kw))
first = massive_activation_effect(model, probe)
writer = first.writer_layer
other = max(range(model.info.n_layers), key=lambda l: -abs(l - (writer + model.info.n_layers) // 2))
massive = massive_activation_effect(model, probe, {
    f"drop block {writer} (writer)": ef.DropLayers(blocks=[writer]),
    f"drop block {other}": ef.DropLayers(blocks=[other]),
    f"TEAL {teal_sparsity:.0%}": teal.intervention(model),
})
figs["pruning_massive_activation"] = massive.figure()
print(massive.summary())

# %% [markdown]
# ## 3. ShortGPT vs SLEB vs LaCo vs TrimLLM (training-free) at each ratio
#
# Perplexity on held-out WordNet glosses, top-1 accuracy on the held-out half of the facts. TrimLLM
# selects on the other half of the facts (its "domain"), so its fact accuracy is held out too.

# %%
rows = [{"method": "unmodified", "ratio": 0.0, "dropped": [], **base_quality}]
sleb = trim = None
if run_sleb:
    sleb = ef.get_method("sleb", ratio=max(ratios), **calib_kw)
    sleb.prepare(model, calib)
    figs["pruning_sleb_curve"] = sleb.curve.figure()
    trim = ef.get_method("trimllm", ratio=max(ratios), **calib_kw)
    trim.prepare(model, calib, score=lambda m: score_select(m).accuracy)
for r in ratios:
    variants = {"shortgpt": ef.get_method("shortgpt", ratio=r, **calib_kw),
                "laco": ef.get_method("laco", ratio=r, merge_layers=3, threshold=0.65, window=64, n_fragments=3)}
    for meth in variants.values():
        meth.prepare(model, calib)
    if sleb is not None:
        variants["sleb"] = sleb.at_ratio(r)
        k = int(round(r * model.info.n_layers))
        variants["trimllm"] = ef.get_method("drop_blocks", layers=sorted(trim.removal_order[:k]))
    for name, meth in variants.items():
        rows.append({"method": name, "ratio": r, "dropped": meth.dropped_blocks, **quality(meth.intervention(model))})
pruning_table = pd.DataFrame(rows)
pruning_table

# %% [markdown]
# ## 4. Dropping attention layers: the KV cache really shrinks
#
# A layer whose attention is dropped writes no keys or values: the workbench cache holds an empty layer
# there, so the physical bytes fall in proportion.

# %%
kv_rows = []
ctx = held_out[0]
for r in (0.0, 0.25, 0.5):
    meth = ef.get_method("attn_drop", ratio=r, **calib_kw)
    meth.prepare(model, calib)
    with model.intervene(meth.intervention(model)):
        st = model.prefill(ctx).stats()
    kv_rows.append({"ratio": r, "dropped attention": meth.dropped_attn, "physical KiB": st.physical_bytes / 1024,
                    "predicted KiB": meth.cost(model, st.full_tokens).kv_bytes / 1024,
                    **quality(meth.intervention(model))})
pd.DataFrame(kv_rows)

# %% [markdown]
# ## 5. TEAL: thresholds, measured sparsity on held-out text, quality
#
# Thresholds are magnitude quantiles of each projection input. TEAL's reference code takes a signed
# quantile instead, which assumes a distribution symmetric around zero; the first figure shows what
# sparsity that assumption would really give on each input.

# %%
figs["teal_symmetry"] = teal.calibration.figure(target=teal_sparsity)
ms = measured_sparsity(model, teal, held_out, window=min(256, ppl_tokens), n_windows=1)
figs["teal_measured_sparsity"] = ms.figure()
print(ms.summary())
teal_quality = quality(teal.intervention(model))
{"unmodified": base_quality, f"TEAL {teal_sparsity:.0%}": teal_quality}

# %% [markdown]
# ## 6. LASER: can a low-rank matrix raise factual accuracy?
#
# Each (layer, matrix, rank) is scored on one half of the facts; the best is applied to the other half.

# %%
sweep = laser_sweep(model, [f.prompt for f in facts], [f.answer for f in facts], layers=laser_layers,
                    kinds=("up", "down"), rhos=laser_rhos)
figs["laser_grid"] = sweep.figure()
print(sweep.summary())

# %% [markdown]
# ## 7. SVD-LLM: whitened truncation at 20% fewer parameters per matrix

# %%
svd = ef.get_method("svd_llm", ratio=0.2, **calib_kw)
svd.prepare(model, calib)
c = svd.cost(model, 0)
{"weight MiB": c.weight_bytes / 2**20, "baseline MiB": c.baseline_weight_bytes / 2**20,
 **quality(svd.intervention(model))}

# %% [markdown]
# ## 8. MHA to MLA without fine-tuning: bytes and quality against d_kv
#
# The latent cache holds d_kv + 8 numbers per token and KV head instead of 128. Without the paper's
# fine-tuning, quality falls a lot on this small model; the attention-sink view shows where.

# %%
keys = passkey_prompts(model, 2, n_tokens=min(256, ppl_tokens), seed=0)
report = mla_report(model, calib, held_out, d_kvs=mla_dkv, rope_dims=8,
                    extra=lambda m: {"passkey": score_passkey(m, keys).accuracy}, **calib_kw)
figs["mla_bytes_quality"] = report.figure()
display(report.to_frame())
mla = ef.get_method("mha2mla", d_kv=max(mla_dkv), rope_dims=8, **calib_kw)
mla.prepare(model, calib)
att = mla_attention_effect(model, mla, probe[:300])
figs["mla_attention"] = att.figure()
print(att.summary())

# %% [markdown]
# ## 9. Interactive views: method and strength
#
# Each explorer computes a (method, strength) on first view and caches it: residual drift per layer
# against the unmodified model, the next-token change, and a per-layer panel of the family.

# %%
prompt = "The capital of France is Paris. The capital of Italy is"
small = {"window": calib_window, "n_windows": n_calib_windows}
pe = pruning_explorer(model, prompt, calib, methods=("shortgpt", "attn_drop"), ratios=ratios,
                      knobs={"shortgpt": small, "attn_drop": small})
pe.show("shortgpt", max(ratios))
figs["pruning_explorer_drift"] = pe.drift_figure
se = sparsity_explorer(model, prompt, calib, sparsities=(0.25, teal_sparsity), allocations=("uniform",),
                       calibration=teal.calibration)
le = lowrank_explorer(model, prompt, calib, ratios=(0.2, 0.5), knobs={"svd_llm": small})
me = mla_explorer(model, prompt, calib, d_kvs=tuple(mla_dkv), svds=("plain",))
display(pe)

# %% [markdown]
# ## 10. Export

# %%
if export:
    written = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    print(f"wrote {len(written)} files to {out_dir}")
