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
# # Transcoders on SmolLM2
#
# A **transcoder** (Dunefsky, Chlenski & Nanda, 2024) replaces an MLP by a wide, sparse
# map: MLP input → sparse features → MLP output. Unlike an SAE on the MLP output, its features
# read the MLP's *input* and write its *output*, so they can be chained into input-invariant
# circuits. Here a transcoder at layer l maps `mlp_in` (`blocks.{l}.ln2.hook_normalized`, the
# normalised MLP input) to `mlp_out` (`blocks.{l}.hook_mlp_out`), and every transcoder is an
# SAELens `Transcoder` object (loadable with `Transcoder.load_from_disk`).
#
# 1. the bundled corpus and the streaming harvest of (mlp_in, mlp_out) pairs;
# 2. training a TopK transcoder (tiny here; the shipped ones come from `scripts/train_transcoders.py`);
# 3. saving and reloading it with SAELens;
# 4. evaluating a shipped transcoder on text it never saw: L0, FVU, the fraction of next-token loss
#    recovered against a zero-ablated and a mean-ablated MLP, per domain with bootstrap
#    intervals, dead and dense features, next to an SAE on the MLP output at the same L0;
# 5. features and circuits;
# 6. export of every figure.
#
# Formulas, defaults, measured numbers and papers: `docs/transcoders.md`; the corpus, its licences and
# how to rebuild it: `docs/corpus.md`.

# %% tags=["parameters"]
out_dir = "out/figures"  # where the figures go (relative to the kernel's working directory)
export = True  # write the figures to out_dir at the end
train_layer = 8  # layer of the demo transcoder
train_tokens = 16384  # tokens harvested once for the demo training
train_steps = 100  # Adam steps of the demo training (the shipped transcoders use 3,000)
train_d_sae = 768  # features of the demo transcoder
train_k = 32  # TopK of the demo transcoder
eval_docs_per_domain = 5  # out-of-domain documents per domain (5 = the whole set)
eval_tokens_per_domain = None  # cap on tokens per domain (None: all)
eval_context = 128  # tokens per evaluation window
eval_heldout_tokens = 1024  # tokens per source of the in-domain held-out split (0: skip)
feature_texts = 40  # held-out corpus texts streamed for top contexts
feature_context = 64  # tokens per window (position 0 of each window is skipped)
circuit_prompt = "The capital of France is Paris. The capital of Italy is"
circuit_depth = 3  # hops from the target that are expanded
circuit_top_k = 5  # children kept per expanded node

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import tempfile
import time

import pandas as pd
import torch
from IPython.display import display
from sae_lens.saes.transcoder import Transcoder

import workbench as wb
from probes import transcoders as T

torch.manual_seed(0)
t_start = time.perf_counter()
timings = {}
figs = {}
model = wb.load()
model

# %% [markdown]
# ## 1. Corpus and harvest
#
# The training corpus is bundled (`workbench/texts/data/corpus/`, built offline by
# `scripts/build_corpus.py`, see `docs/corpus.md`): text the model itself generated over a seeded
# grid of topics × genres × formats (stories, dialogue, news, how-to, encyclopedic, letters,
# essays, reviews, FAQs and code, as chat transcripts, plain replies and continuations), Python
# documentation, Linux man pages, package READMEs, source code in several languages and WordNet
# glosses. Whole groups (a documentation file, a man page, a package, a generated topic) are held
# out per source and genre as an in-domain test split. The **out-of-domain set** shares no source
# with it: hand-written news, dialogue, fiction, how-to, explainer and chat text, and standard
# library, zlib and npm code.
#
# The harvester cuts training text into 128-token windows, runs a forward pass truncated after
# the last needed layer, drops position 0 (the attention sink, whose residual is about 100× larger
# than the rest and would dominate the loss) and yields (mlp_in, mlp_out) rows.

# %%
from workbench.texts import corpus_info, load_eval_set

t0 = time.perf_counter()
info = corpus_info()
display(pd.DataFrame({src: {f"{split} tokens": v["tokens"] for split, v in sp.items()}
                      for src, sp in info["sizes"].items()}).T.fillna(0).astype(int))
ood = load_eval_set()
print(f"out-of-domain set: {len(ood)} documents in domains",
      sorted({d.genre for d in ood}), "| sources:", sorted({d.source.split(" (")[0] for d in ood}))
speed = T.measure_harvest(model, train_layer, n_windows=8)
print(f"harvest at layer {train_layer}: {speed.tokens} tokens in {speed.forward_s:.2f} s = "
      f"{speed.tokens_per_s:.0f} tokens/s")
cache = T.harvest_cache(model, [train_layer], train_tokens)
x_all, y_all = cache[train_layer]
print("cached", tuple(x_all.shape), "inputs and", tuple(y_all.shape), "targets;",
      f"mean ‖mlp_in‖ {x_all.norm(dim=-1).mean():.1f}, mean ‖mlp_out‖ {y_all.norm(dim=-1).mean():.2f}")
timings["harvest"] = time.perf_counter() - t0

# %% [markdown]
# ## 2. Training
#
# `train_transcoder` takes any iterator of (input, target) batches. Here the cached rows are
# reshuffled every epoch. The TopK variant keeps the `k` largest pre-activations, with an auxiliary
# loss that lets dead features learn the residual error; decoder rows stay at unit norm.
# ReLU + L1 (the paper's recipe) and JumpReLU are the other `activation`s, and `skip=True` adds a
# linear skip connection.

# %%
t0 = time.perf_counter()
cfg = T.TranscoderTrainingConfig(d_in=model.info.d_model, d_out=model.info.d_model, d_sae=train_d_sae,
                                 activation="topk", k=train_k, total_steps=train_steps, batch_size=512,
                                 lr=2e-3, log_every=max(1, train_steps // 20), dead_window=max(10, train_steps // 2))
ckpt_dir = tempfile.mkdtemp(prefix="transcoder-demo-")
batches = (b[train_layer] for b in T.cached_batches(cache, batch_size=512))  # {layer: (x, y)} -> (x, y)
demo = T.train_transcoder(batches, cfg, checkpoint_dir=ckpt_dir,
                          metadata=T.model_metadata(model, train_layer))
timings["train"] = time.perf_counter() - t0
figs["demo_training"] = demo.figure()
display(demo)
figs["demo_training"]

# %% [markdown]
# ## 3. Save and reload with SAELens
#
# The checkpoint folder is SAELens's format (`cfg.json`, `sae_weights.safetensors`) plus the
# training state for resuming. The metadata records the model fingerprint, the layer and the
# hook names; loading through the workbench checks them against the model.

# %%
reloaded = Transcoder.load_from_disk(ckpt_dir)
checked = T.load_transcoder(ckpt_dir, model=model, layer=train_layer)
probe = x_all[:4]
print(type(reloaded).__name__, "| same outputs:", torch.allclose(reloaded(probe), demo.transcoder(probe), atol=1e-6),
      "| metadata:", {k: checked.cfg.metadata.get(k) for k in ("hook_name", "hook_name_out", "hook_layer",
                                                                "model_fingerprint", "training_step")})
try:
    T.load_transcoder(ckpt_dir, model=model, layer=train_layer + 1)
except wb.InputError as e:
    print("wrong layer ->", e)

# %% [markdown]
# ## 4. Evaluating a shipped transcoder
#
# The repo ships TopK transcoders for two mid layers (`probes/data/transcoders/`, float16) and
# an SAE on the MLP output of the first one, trained by the same trainer on the same activations
# at the same L0. `evaluate` runs every document of the out-of-domain set (by default) clean,
# with the MLP output replaced (by the transcoder of `mlp_in`, or the SAE reconstruction of
# `mlp_out`), with the MLP zero-ablated, and with the MLP output replaced by its mean over the
# evaluation tokens. *Fraction of loss recovered* against a baseline b =
# (CE_b − CE_replaced) / (CE_b − CE_clean); the mean-ablated baseline is the stricter one (it
# already keeps the MLP's constant part). Intervals are bootstrap over documents, within each
# domain. Position 0 is left clean in every replaced run.
#
# Two kinds of transcoder ship per layer, trained on the same batches at the same L0 and width:
# the default **skip transcoder** adds a dense linear map of the input (SAELens's `W_skip`) to the
# sparse path, the **plain** one (`load_pretrained(model, kind="plain")`) sends everything through
# features and the error term.
#
# What the full run measured (`BENCHMARKS.md`; d_sae 3,072, k 64, 3,000 steps over 1.07M corpus
# tokens; this notebook's test run uses fewer documents, so its numbers move), out of domain,
# recovered vs zero / vs mean: skip transcoder L8 0.897 / 0.851, plain L8 0.865 / 0.804, SAE L8
# 0.904 / 0.861; skip L15 0.894 / 0.841, plain L15 0.843 / 0.766, SAE L15 0.903 / 0.855. On the
# in-domain held-out split the skip transcoders beat the SAEs (0.943 and 0.983 against 0.916 and
# 0.931). Code holds up best; prose is 0.03–0.09 lower at layer 8 and more at layer 15. Harvest
# and training of all six models took 26 min on the quiet 2-core machine.

# %%
t0 = time.perf_counter()
shipped = T.load_pretrained(model)
print("shipped transcoders:", {l: f"{type(tc).__name__} d_sae={tc.cfg.d_sae} k={tc.cfg.k}" for l, tc in shipped.items()})
eval_layer = min(shipped)
candidates = {f"skip transcoder L{eval_layer} (shipped)": shipped[eval_layer],
              f"plain transcoder L{eval_layer} (shipped)": T.load_pretrained(model, eval_layer, kind="plain")[eval_layer]}
if eval_layer in T.shipped_layers("sae"):
    candidates[f"SAE on mlp_out L{eval_layer} (shipped)"] = T.load_pretrained_sae(model, eval_layer)
if train_layer == eval_layer:
    candidates[f"demo transcoder ({train_steps} steps)"] = demo.transcoder
report = T.evaluate(model, candidates, layer=eval_layer, max_docs_per_domain=eval_docs_per_domain,
                    max_tokens_per_domain=eval_tokens_per_domain, context=eval_context)
timings["evaluate"] = time.perf_counter() - t0
figs["evaluation"] = report.figure()
display(report)
display(report.domain_frame().round(3))
figs["evaluation"]

# %% [markdown]
# The same transcoders on the corpus's in-domain held-out split (whole documentation files,
# man pages, packages and generated topics the trainer never saw, but from the training sources):
# the gap between the two tables is what a user loses by bringing their own text.

# %%
if eval_heldout_tokens:
    t0 = time.perf_counter()
    heldout = T.evaluate(model, candidates, layer=eval_layer, eval_set="heldout",
                         max_tokens_per_domain=eval_heldout_tokens, context=eval_context)
    timings["evaluate held-out"] = time.perf_counter() - t0
    display(heldout)

# %% [markdown]
# All four runs (clean, replaced, zero- and mean-ablated) score the same tokens. The
# frequency histogram shows how often each feature fires: dead features (never active) are not
# drawn on the log scale; dense ones (active on more than 10% of tokens) sit at the right edge.
#
# ## 5. Features and circuits
#
# Each transcoder feature has an encoder column (what it reads from the normalised MLP input) and
# a unit-norm decoder row (what it writes into the residual stream). That split makes features
# inspectable without running the model: a feature's decoder row dotted with a later layer's
# encoder columns is an input-invariant connection strength, and its encoder column pulled back
# through the embedding (or a head's OV circuit) gives the tokens that turn it on. The cells
# below use the shipped transcoders loaded above (`shipped`, a dict layer → SAELens transcoder).

# %% [markdown]
# ### Top activating contexts
#
# For the upper shipped transcoder we stream held-out corpus texts through a forward pass
# truncated after its layer and keep, per feature, the top activating contexts (a running top-k:
# memory does not grow with the corpus), the activation frequency and a histogram of its non-zero
# activations.

# %%
from IPython.display import HTML

from interventions import FeatureAblate, FeatureClamp, SpliceTranscoder
from probes.transcoders import (attribution_graph, capture_prompt, circuit_explorer, connection_strengths,
                                de_embeddings, feature_explorer, feature_contexts, logit_effects, top_features)

t0 = time.perf_counter()
tcs = shipped  # {layer: SAELens transcoder}, checked against the model's fingerprint when loaded
lo, hi = min(tcs), max(tcs)
ctx = feature_contexts(model, tcs[hi], hi, T.load_corpus("heldout")[:feature_texts], k=8, context=feature_context)
timings["feature contexts"] = time.perf_counter() - t0
print(ctx)
figs["tc_feature_frequency"] = ctx.figure()
figs["tc_feature_frequency"]

# %% [markdown]
# Pick a feature that is selective (active on under 5% of tokens) and fires strongly; its top
# contexts are shaded by the activation on each token (the activating token is underlined).

# %%
table = ctx.to_frame()
selective = table[(table.frequency > 0) & (table.frequency < 0.05)]
feat = int((selective if len(selective) else table).sort_values("max_activation", ascending=False).feature.iloc[0])
display(HTML(ctx.contexts_html(feat, max_rows=6)))
figs["tc_feature_histogram"] = ctx.histogram_figure(feat)
figs["tc_feature_histogram"]

# %% [markdown]
# What the feature does and what turns it on, without any data: its **logit effects** (decoder row
# through the final norm's gain and the unembedding; later layers ignored) and its
# **de-embeddings** (the token embeddings that activate it directly, and the norm of its pull-back
# through each earlier head's OV circuit: which heads could feed it).

# %%
le = logit_effects(model, tcs[hi], hi, feat)
de = de_embeddings(model, tcs[hi], hi, feat)
figs["tc_logit_effects"] = le.figure(k=8)
figs["tc_ov_deembedding"] = de.figure()
display(pd.concat([le.top(8).add_prefix("promoted "), le.top(8, bottom=True).add_prefix("suppressed "),
                   de.top(8).add_prefix("direct de-embedding ")], axis=1).round(3))
figs["tc_logit_effects"]

# %% [markdown]
# The feature explorer: every tracked feature, its contexts, histogram, logit effects and OV norms.

# %%
feature_explorer(model, tcs[hi], hi, ctx)

# %% [markdown]
# ### Circuits
#
# **Input-invariant**: the connection strength from feature i of layer `lo` to feature j of
# layer `hi` through the residual stream is W_dec[i] · W_enc[:, j] (per unit of activation, before
# the destination's norm scale).

# %%
conn = connection_strengths(model, tcs, lo, hi)
conn.top(8).round(3)

# %% [markdown]
# **Input-dependent**: for one prompt, the greedy attribution graph of the top predicted token's
# logit. Every norm scale is frozen at its clean value, so each node's value is exactly the sum of
# its kept children and its error nodes (transcoder error, MLPs without a transcoder, biases,
# pruned contributors). Heads are drawn at their source token.

# %%
t0 = time.perf_counter()
pcache = capture_prompt(model, tcs, circuit_prompt)
last = pcache.n_tokens - 1
target_tok = int(pcache.logits[last].argmax())
graph = attribution_graph(model, tcs, circuit_prompt, logit=target_tok, max_depth=circuit_depth,
                          top_k=circuit_top_k, cache=pcache)
timings["attribution graph"] = time.perf_counter() - t0
print(graph, f"- predicted {model.tokenizer.decode([target_tok])!r}, conservation gap {graph.conservation_gap():.1e}")
figs["tc_circuit_logit"] = graph.figure()
figs["tc_circuit_logit"]

# %% [markdown]
# Where the predicted logit comes from, one step back, with the skip transcoders (the default) and
# with the plain ones: the skip term is a node of its own (a dense linear map of the MLP input,
# carrying no feature), so with skip transcoders less of each MLP's share is explained by
# features; with plain ones that share goes to features and the error term. Both sums are exact.

# %%
plain_tcs = T.load_pretrained(model, kind="plain")
pcache_plain = capture_prompt(model, plain_tcs, circuit_prompt)
shares = {}
for name, pc in (("skip transcoders", pcache), ("plain transcoders", pcache_plain)):
    c = T.logit_contributions(pc, last, target_tok)
    by_kind = c.to_frame().groupby("kind")["value"].sum()
    assert abs(c.total() - c.target_value) < 1e-3 * max(1.0, abs(c.target_value))
    shares[name] = by_kind.reindex(["feature", "skip", "tc_error", "tc_bias", "untranscoded", "head", "embed"]).fillna(0.0)
display(pd.DataFrame(shares).round(3))

# %%
top = top_features(pcache, last, 5)
display(top.round(3))
f_layer, f_idx = int(top.layer[0]), int(top.feature[0])
fgraph = attribution_graph(model, tcs, circuit_prompt, feature=(f_layer, last, f_idx), max_depth=circuit_depth,
                           top_k=circuit_top_k, cache=pcache)
figs["tc_circuit_feature"] = fgraph.figure()
display(fgraph.to_frame().head(12).round(3))
figs["tc_circuit_feature"]

# %% [markdown]
# The explorer: pick a position and a target (the top logit or an active feature), then any node.

# %%
circuit_explorer(model, tcs, circuit_prompt, max_depth=circuit_depth, top_k=circuit_top_k)

# %% [markdown]
# ### Splicing and clamping
#
# Replace the MLPs by their transcoders (with and without the error term), then ablate the most
# active feature at the last token or clamp it to twice its value, and compare the next-token
# distribution.

# %%
z_top = float(pcache.z[f_layer][last, f_idx])
variants = {
    "clean": [],
    "spliced": [SpliceTranscoder(tcs)],
    "spliced + error term": [SpliceTranscoder(tcs, with_error=True)],
    f"ablate L{f_layer}F{f_idx}": [FeatureAblate(f_layer, tcs[f_layer], f_idx, positions=[last])],
    f"clamp L{f_layer}F{f_idx} to {2 * z_top:.2f}": [FeatureClamp(f_layer, tcs[f_layer], f_idx, 2 * z_top,
                                                                 positions=[last])],
}
rows = []
for name, ivs in variants.items():
    lp = torch.log_softmax(model.run(circuit_prompt, logits="last", interventions=ivs).last_logits[0].float(), -1)
    best = lp.topk(3)
    rows.append({"run": name, f"p({model.tokenizer.decode([target_tok])!r})": float(lp[target_tok].exp()),
                 "top 3": ", ".join(repr(model.tokenizer.decode([int(i)])) for i in best.indices)})
pd.DataFrame(rows).round(4)

# %% [markdown]
# ## 6. Export the figures
#
# As in the tour: PNG and HTML when a Chromium is available (`make system`), else HTML only.

# %%
if export:
    paths = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    display(pd.DataFrame({"file": [str(p) for p in paths],
                          "KiB": [round(p.stat().st_size / 1024, 1) for p in paths]}))
print("section timings (s):", {k: round(v, 1) for k, v in timings.items()})
print(f"transcoders notebook finished in {time.perf_counter() - t_start:.1f} s (after imports)")
