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
# # Factual recall: which components put the answer there, reading from which tokens?
#
# **SmolLM2-135M-Instruct** answers prompts such as *"The capital city of France is"* with
# *" Paris"*. This notebook takes the answer's logit apart, exactly, and looks for the mechanisms
# of Chughtai, Cooney & Nanda ("Summing Up the Facts", 2024) and Lv et al. (2024):
#
# 1. the bundled prompts (5 relations, about 900 prompts) and the model's accuracy on them;
# 2. exact direct logit attribution (DLA) of one prompt: embedding, every head, every MLP, with
#    the final RMSNorm frozen; each head split by the token it reads (subject / relation / the last
#    token itself / other);
# 3. DLA over a prompt set; head classes (subject, relation, mixed, last) with their numbers;
# 4. the additive motif: the answer's rank among the relation's candidates under each mechanism
#    alone and under their sum;
# 5. final-layer suppression: scale the suppressive heads and watch the answer's probability;
# 6. an explorer widget: pick a prompt, see its DLA and the top heads' attention;
# 7. causal checks, lenses and probes;
# 8. export of every figure.
#
# Formulas, defaults, measured numbers and papers: `docs/factual.md`. The defaults take
# a few minutes on two CPU cores; the size knobs make it faster.

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct (the facts' answer tokens assume its tokenizer)
out_dir = "out/figures"  # where the figures go (relative to the kernel's working directory)
export = True  # write the figures to out_dir at the end
example_id = "capital/France"  # the prompt taken apart in section 2
n_eval_per_relation = 40  # prompts per relation for the live accuracy check (the full table is in the meta file)
n_mech_per_relation = 16  # prompts per relation for head classes, the motif and suppression
suppression_alphas = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]  # scales of the suppressive heads' output
n_patch_pairs = 3  # capital-city pairs for activation and attribution patching
lens_pydoc_chunks = 24  # chunks of CPython's pydoc topics added to the bundled domain texts (linear-lens corpus)
lens_max_tokens = 128  # tokens kept per corpus text
lens_layer_step = 3  # compare the lenses on every lens_layer_step-th layer (and the last)
lens_eval_tokens = 400  # held-out tokens scored per layer
lre_layer = 16  # subject layer of the LRE (16 was the most faithful of 4, 8, 12, 16 on SmolLM2)
lre_n_train = 6  # LRE training subjects (each costs d_model/64 batched backward passes)
lre_n_test = 20  # held-out subjects for faithfulness
lre_study_relation = "demonym"  # relation for the paper's protocol: capital, demonym or antonym
lre_study_candidates = 60  # (subject, object) pairs tried; only facts the model knows are used
lre_study_train = 8  # training subjects (8 as in the paper)
lre_study_layers = [4, 8, 12, 16]  # subject layers tried on the validation subjects
lre_study_ranks = [8, 16, 32, 64, 128, 256]  # ranks of the inverse tried on validation edits
sat_n_prompts = 120  # capital prompts for the SAT probe
sat_n_two_constraints = 200  # two-constraint country prompts (full-answer labels)

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import time

import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import display

import workbench as wb
from probes.factual import (accuracy_table, additive_motif, classify_heads, direct_logit_attribution,
                            direct_logit_attribution_many, evaluate_facts, fact_explorer, load_facts,
                            suppression_effect, suppressive_heads)

t_start = time.perf_counter()
figs = {}  # name -> figure, exported at the end
timings = {}  # section -> seconds


def tick(name, t0):
    timings[name] = time.perf_counter() - t0
    print(f"[{name}: {timings[name]:.1f} s]")


# %%
t0 = time.perf_counter()
model = wb.load() if model_name is None else wb.load(model_name)
torch.set_grad_enabled(False)
tick("load", t0)
model

# %% [markdown]
# ## 1. The prompts
#
# `probes/data/facts/facts_v1.jsonl` is built offline by `scripts/build_facts.py` from the
# `countryinfo` package and hand-written tables. Every prompt uses the SmolLM2-Instruct format
# `"User: <question>\nAssistant: <sentence>"`; the answer is the next word. The answer's token is
# its **first** token, and within a relation every candidate starts with a different token, so
# "first token right" means "this candidate". The build stores the model's accuracy on every
# prompt in the meta file: argmax == answer token, and the answer's rank among the relation's
# candidates.

# %%
facts = load_facts()
print(facts)
meta_acc = pd.DataFrame(facts.meta["accuracy"]["per_relation"]).T
meta_acc.round(3)

# %%
t0 = time.perf_counter()
sample = facts.sample(n_eval_per_relation, seed=0)
evals = evaluate_facts(model, sample)
live = accuracy_table(evals)
tick("accuracy check", t0)
pd.concat({"this run (sample)": live[["n", "acc_vocab_top1", "acc_candidates_top1"]],
           "meta file (all prompts)": meta_acc[["n", "acc_vocab_top1", "acc_candidates_top1"]]}, axis=1).round(3)

# %%
print(facts.filter(ids=[example_id])[0].prompt)
evals[~evals["correct"]].head(8)[["id", "answer", "top1", "rank_candidates", "p_answer"]]

# %% [markdown]
# ## 2. Exact DLA of one prompt
#
# At the last position the residual is the sum of the embedding, 270 head outputs and 30 MLP
# outputs. With the final RMSNorm's scale frozen at its value in this run, the logit is linear in
# the residual, so each component's contribution is exact and they add up to the logit. Each
# head's output is itself a sum over the tokens it reads, `A[END, s] · v_s W_O^h`, which splits its
# contribution by source token: subject tokens, relation tokens, the last token END itself (always
# its own group, whatever the spans cover, so that "relation" means the relation words) and the
# rest. The `diff` metric is the answer minus the mean of the relation's other candidates.

# %%
t0 = time.perf_counter()
fact = facts.filter(ids=[example_id])[0]
r = direct_logit_attribution(model, fact)
tick("DLA of one prompt", t0)
print(f"sum of components {r.total[0]:.4f} vs logit {r.logits[0]:.4f} (|error| {r.error:.1e})")
r

# %%
figs["dla_bars"] = r.figure()
figs["dla_bars"]

# %%
figs["dla_sources"] = r.source_figure("diff")
figs["dla_sources"]

# %%
figs["dla_tokens"] = r.token_figure(12)
figs["dla_tokens"]

# %%
df = r.to_frame()
df.reindex(df["diff"].abs().sort_values(ascending=False).index).head(12).round(3)

# %% [markdown]
# On *capital/France* (same at any size) the logit of " Paris" is 17.2 = MLPs 13.4 + attention
# 3.9 − embedding 0.07, and the sum of the components matches the logit to about 1e-5. Most of it
# comes from the MLPs of layers 23–29. Among the heads, **L23H4** gives +2.7, almost all of it read
# from the two " France" tokens, with L23H1 (+1.3) and L23H5 (+0.7) doing the same; **L29H1**
# (+1.9) reads the last token itself (+1.96 from it); **L29H0** (−1.1) pushes the answer down.
#
# ## 3. Over a prompt set: head classes
#
# DLA of every sampled prompt (one forward per batch), then each head's mean DLA from subject,
# relation, last-token and other tokens, on the prompts whose answer the model ranks first among the
# candidates. With SR = |subject| + |relation|: **subject** head if |subject| / SR ≥ 0.7,
# **relation** head if |relation| / SR ≥ 0.7, **mixed** otherwise; **last** if |last| > SR and
# |last| ≥ |other| (it reads the token it sits on); **other** if |other| > SR and |other| > |last|
# (mostly position 0); **minor** if everything is below 0.1 logit.

# %%
t0 = time.perf_counter()
mech = facts.sample(n_mech_per_relation, seed=1)
results = direct_logit_attribution_many(model, mech, batch_size=16)
tick(f"DLA of {len(results)} prompts", t0)
right = [x for x in results if (x.logits[1:] < x.logits[0]).all()]
used = right if len(right) >= 3 else results
print(f"{len(right)} of {len(results)} prompts have the answer first among the candidates; classifying on {len(used)}")
totals = pd.DataFrame([{**x.group_totals("logit"), "relation": x.relation} for x in results])
totals.groupby("relation").mean().round(2)

# %%
classes = classify_heads(used, metric="diff")
classes

# %%
figs["head_classes"] = classes.figure()
figs["head_classes"]

# %%
cls_frame = classes.to_frame()
cls_frame[cls_frame["class"] != "minor"].head(15).round(3)

# %% [markdown]
# With the default sizes (80 prompts, 54 of them with the answer first among the candidates):
# MLPs carry most of the answer logit in every relation (about 7–12 against 1.4–5 for attention).
# Seven heads are subject heads, all in layers 23–24: L23H4 (+1.97 from the subject on average),
# L23H5 (+1.08) and L23H1 (+0.78), plus small negative ones (L24H4 −0.41). At these thresholds
# there is **no relation head and no mixed head**: none of the 10 heads above the threshold takes
# more than 0.05 logit from the relation words. Two large heads read **the last token itself**: L29H1 (+1.45 from it) and the
# suppressive L29H0 (−1.03); L29H2 splits between the last token (+0.31) and other tokens (+0.34,
# hardly any from position 0: see the `other_from_position_0` column), so it is "other". Relation
# information reaches the answer through the MLPs and through heads reading the last token, not
# through heads that read the relation words.
#
# ## 4. The additive motif
#
# For each prompt, the DLA of every candidate of its relation, summed within five groups: subject
# heads, relation heads, the subject part and the relation part of mixed heads, and the MLPs. The
# table gives how often the answer is the top candidate under each group alone, under their sum,
# and in the model's own logits; and how often *only* the sum gets it right (constructive
# interference). A group with no head has no rank (empty row).

# %%
motif = additive_motif(results, classes)
motif

# %%
motif.by_relation().round(2)

# %%
figs["additive_motif"] = motif.figure()
figs["additive_motif"]

# %% [markdown]
# With the default sizes: the subject heads alone rank the answer first on 55% of the 80 prompts,
# the MLPs alone on 36%, their sum on 61%, and the model's full logits on 68%. Only the sum gets it
# right on 4% (3 prompts). With only two non-empty groups the additive motif is weak here: most of
# the time one mechanism already ranks the answer first.
#
# ## 5. Final-layer suppression
#
# Heads of the last three layers whose mean DLA on the answer is below −0.1 push the answer down.
# Scaling their output by α (α = 0 removes them, α = 1 is the clean model) shows what they do to
# the answer's probability over the prompt set.

# %%
t0 = time.perf_counter()
sup_heads = suppressive_heads(results, last_layers=3, threshold=-0.1, max_heads=3)
print("suppressive heads:", sup_heads)
if sup_heads:
    supp = suppression_effect(model, mech, [x.targets[0] for x in results], sup_heads, alphas=suppression_alphas)
    figs["suppression"] = supp.figure()
    display(supp.to_frame().round(4))
tick("suppression", t0)
figs.get("suppression", "no suppressive head found at this threshold")

# %% [markdown]
# With the default sizes the suppressive heads are L29H0, L28H8 and L27H7. Removing them (α = 0)
# raises the mean answer probability from 0.45 to 0.49 and the accuracy from 61% to 68% over the
# 80 prompts; amplifying them (α = 1.5) lowers these to 0.42 and 54%. The change is monotonic in α:
# these heads push the answer down, as Lv et al.'s "anti-overconfidence" components do.
#
# ## 6. Explorer
#
# Pick a prompt: the DLA bars, the last token's attention for its top heads (S marks subject
# tokens, R relation tokens, E the last token) and the full pattern of a chosen head. Each prompt's DLA is computed
# on first selection.

# %%
t0 = time.perf_counter()
explorer = fact_explorer(model, list(mech)[:12], n_top=8)
tick("explorer", t0)
explorer

# %%
figs["explorer_rows"] = go.Figure(explorer.rows_figure)
figs["explorer_rows"]

# %% [markdown]
# ## 7. Causal checks: activation patching and attribution patching
#
# DLA says which components *write* the answer; patching asks whether they are *needed*. Each
# fact prompt gets a corrupted twin with the subject swapped for another subject of the same
# token length ("The capital city of France is" → "… of Japan is"), so positions line up. The
# metric is the logit difference answer − corrupted answer at the last position, normalised so
# the clean run scores **1** and the corrupted run **0**.
#
# - **Residual patching** (`patch_residual`): run the corrupted prompt and copy in the clean
#   `resid_pre` (the residual entering block *l*) at one (layer, position); one batched row per cell.
# - **Per-head patching** (`patch_heads`): copy in one head's clean output `z` (before the output
#   projection) at every position; 270 patched runs on SmolLM2, 64 per forward.
# - **Attribution patching** (`attribution_patching`): a first-order estimate of all 270 head
#   effects from 2 forwards and 1 backward, `(z_clean − z_corrupted) · ∂metric/∂z` at the
#   corrupted run; compared with real per-head patching by Pearson and Spearman correlation.
#
# What to expect on SmolLM2 (bundled chat-format capital prompts, France → Japan; the subject is
# mentioned twice): up to layer 8 the second mention alone carries the answer (≈ 0.8–0.9); from
# layer 9 to 23 both mentions carry part of it (≈ 0.35 each: the second mention has read the
# first); from layer 24 on only the last position does (≈ 0.93–0.99). The move happens in layer 23,
# and the head with by far the largest effect is the subject-mover **L23H4** of the DLA section
# (0.67–0.78 of the way back to the clean answer by itself on three pairs), followed by L29H1 and
# L23H5; L29H0, the suppressive head, has a negative effect. The attribution estimate (denoising)
# correlates with real per-head patching at Pearson 0.98–0.995 and Spearman ≈ 0.98–0.99 on these
# three pairs, from 3 passes instead of 270 patched runs (in the noising direction it once misses
# L23H4 entirely, so check the large effects with real patching).

# %%
from probes.factual import attribution_patching, patch_heads, patch_residual, patching_pair

capitals = {f.subject: f for f in facts.by_relation("capital")}
patch_subjects = [("France", "Japan"), ("Germany", "Italy"), ("Spain", "Greece")][:n_patch_pairs]
# every mention of the subject is swapped; the substitute's own answer is the corrupted answer
pairs = [patching_pair(model, capitals[c], substitutes=[capitals[r]]) for c, r in patch_subjects]
for p in pairs:
    print(p.describe())

t0 = time.perf_counter()
resid_patch = patch_residual(model, pairs[0], site="resid_pre")
tick("residual patching (one pair)", t0)
resid_patch

# %%
figs["patching_resid_pre"] = resid_patch.figure()
figs["patching_resid_pre"]

# %%
t0 = time.perf_counter()
head_patch = [patch_heads(model, p, positions="all") for p in pairs]
attr_patch = [attribution_patching(model, p, positions="all") for p in pairs]
tick(f"per-head patching + attribution patching ({len(pairs)} pair(s))", t0)
comparisons = [a.compare(h) for a, h in zip(attr_patch, head_patch)]
pd.DataFrame([{"pair": f"{c} → {r}", "pearson": comp.pearson, "spearman": comp.spearman,
               "attribution s (2 fwd + 1 bwd)": comp.attribution.seconds,
               "patching s (270 runs)": comp.actual.seconds,
               "top head (patching)": "L{}H{}".format(*comp.actual.top(1)[["layer", "head"]].iloc[0])}
              for (c, r), comp in zip(patch_subjects, comparisons)]).round(3)

# %%
head_patch[0].top(10).round(3)

# %%
figs["patching_heads"] = head_patch[0].figure()
figs["patching_heads"]

# %%
figs["attribution_patching_heads"] = attr_patch[0].figure()
figs["attribution_patching_heads"]

# %%
figs["attribution_vs_patching"] = comparisons[0].figure()
figs["attribution_vs_patching"]

# %% [markdown]
# The scatter has one point per head (colour: layer). Points on the dotted line are heads whose
# effect the gradient predicts exactly; large effects are usually underestimated (the metric
# saturates), which does not change the ranking much. Attribution patching also gives a
# residual-stream estimate per (layer, position) at no extra cost, to set beside the real grid above:

# %%
figs["attribution_patching_resid"] = attr_patch[0].resid_figure()
figs["attribution_patching_resid"]

# %% [markdown]
# ## 8. Lenses: from which layer can the answer be read?
#
# The **logit lens** decodes the residual after block *l* with the model's own final norm and
# unembedding, as if the remaining blocks did nothing. The **linear lens** ("jump", Din et al.)
# first maps the residual to the final residual with an affine map fitted by least squares
# (per layer, `torch.linalg.lstsq` on the normal equations with a small ridge), then decodes it the
# same way. Both are scored on **held-out texts** (the corpus is split by text) by precision@1: how
# often the lens's top token at layer *l* is the model's final top token. Position 0 is left out of
# fitting and scoring (its residual norm is about 2·10⁴ on SmolLM2, the attention sink).
#
# Measured on SmolLM2 (default corpus: 27 fit texts, 2,820 tokens; 512 held-out tokens; λ from 1e-4
# to 1e-2 moves the middle layers by about 0.02): the logit lens stays below 0.1 until layer 18 and
# reaches 0.19 / 0.38 / 0.48 at layers 21 / 24 / 27; the linear lens is at 0.20 already at layer 0
# and 0.29 / 0.46 / 0.61 / 0.73 at layers 12 / 21 / 24 / 27. On the capital prompt below " Paris" is
# top-1 from layer 24 under the linear lens, but only at the last layer under the logit lens (rank 3
# at layers 27–28). With the small test parameters the lens is fitted on a few hundred tokens only
# and these numbers are much noisier.

# %%
import numpy as np

from probes.factual.lenses import compare_lenses, lens_corpus, lens_trajectory

L = model.info.n_layers
lens_layers = sorted(set(range(0, L, lens_layer_step)) | {L - 1})
t0 = time.perf_counter()
lenses = compare_lenses(model, lens_corpus(n_pydoc=lens_pydoc_chunks), layers=lens_layers,
                        max_tokens=lens_max_tokens, max_eval_tokens=lens_eval_tokens)
tick("lens fit + comparison", t0)
lenses

# %%
figs["lens_precision"] = lenses.figure()
figs["lens_precision"]

# %%
lenses.to_frame().round(3)

# %%
capital_prompt = "User: What is the capital city of France?\nAssistant: The capital city of France is"
traj = lens_trajectory(model, capital_prompt, " Paris", lens=lenses.lens)
figs["lens_trajectory"] = traj.figure()
print(traj)
figs["lens_trajectory"]

# %% [markdown]
# ## 9. FFN sub-updates: which value vectors write the answer?
#
# Geva et al. (2022): an MLP's output is Σᵢ mᵢ vᵢ (+ bias), with vᵢ the rows of the down projection
# and mᵢ the hidden activation (SwiGLU: SiLU(gate)·up, which can be negative). Per layer, the bar
# chart gives the MLP's direct contribution to the answer logit (final norm frozen) and the largest
# single sub-update; then the dominant sub-updates of the strongest layer, ranked by |mᵢ|·‖vᵢ‖ and by
# their contribution to the answer, each projected to the vocabulary (sign(mᵢ)·W_Uᵀ(g ⊙ vᵢ)).
# Σᵢ mᵢvᵢ + b equals `mlp_out` exactly (checked below).

# %%
from probes.factual.ffn_updates import ffn_layer_summary, ffn_sub_updates

t0 = time.perf_counter()
ffn_summary = ffn_layer_summary(model, capital_prompt, " Paris")
tick("FFN layer summary", t0)
figs["ffn_by_layer"] = ffn_summary.figure()
figs["ffn_by_layer"]

# %%
best_mlp = ffn_summary.layers[int(np.argmax(ffn_summary.total))]
ffn = ffn_sub_updates(model, capital_prompt, best_mlp, answer=" Paris", top_k=10, rank_by="answer")
print(f"max |Σ m_i v_i + b - mlp_out| = {ffn.reconstruction_error():.2e}")
figs[f"ffn_sub_updates_L{best_mlp}"] = ffn.figure()
display(ffn)
figs[f"ffn_sub_updates_L{best_mlp}"]

# %%
ffn_sub_updates(model, capital_prompt, best_mlp, answer=" Paris", top_k=10, rank_by="magnitude")

# %% [markdown]
# ## 10. Linear relational embeddings
#
# Hernandez et al. (2024): LRE(s) = β·W s + b, with W the mean Jacobian of the final residual (last
# token) with respect to the subject's last-token state at layer ℓ, over a few training subjects,
# and b the mean of oᵢ − Jᵢsᵢ. *Faithfulness* is the fraction of held-out subjects whose LRE output,
# decoded through the final norm and unembedding, has the model's own top-1 token. Each training
# subject costs d_model/64 batched backward passes over the prompt's suffix, so only a few are used.
#
# Measured on SmolLM2 (capital, 6 training subjects, 20 held-out, model accuracy 0.80 on them):
# faithfulness at β = 2.5 is 0.15 / 0.15 / 0.25 / 0.40 for subject layers 4 / 8 / 12 / 16 (best over
# β: 0.35 / 0.30 / 0.40 / **0.60 at β = 4**). The unfaithful cases still decode to *a* capital, often
# one of the training subjects' (" Kolk", " Jak", " Islam"): the relation is partly linear on this
# model. About 1 min per training subject on a busy 2-core machine. With the small test parameters
# (1 training subject, 4 held out) the number means nothing.

# %%
from probes.factual.lre import fit_lre

lre_facts = list(facts.by_relation("capital").sample(lre_n_train + lre_n_test, seed=0))
t0 = time.perf_counter()
lre = fit_lre(model, lre_facts[:lre_n_train], lre_facts[lre_n_train:], layer=min(lre_layer, L - 1))
tick(f"LRE ({lre_n_train} training subjects)", t0)
figs["lre_faithfulness"] = lre.figure()
display(lre)
figs["lre_faithfulness"]

# %% [markdown]
# ### LRE as in the paper: few-shot Jacobians, validation, causality
#
# `lre_study` follows the paper's protocol: every prompt is a 3-shot in-context prompt ("A person
# from Japan is called Japanese." ... "A person from {s} is called"), only facts the model gets
# right are used, the LRE is the mean Jacobian of 8 training subjects, the subject layer and β are
# chosen on validation subjects, and the test subjects give **faithfulness** and **causality**:
# the subject state is edited by Δs = W_ρ⁺(o′ − o) (a rank-ρ pseudo-inverse, ρ chosen on validation
# edits) and succeeds when the model then predicts the other subject's object. Controls: swapping
# in the other subject's state (an upper bound) and a random edit of the same norm (should fail).
#
# Measured on SmolLM2 (`python scripts/reproductions.py --measure lre`, REPRODUCTIONS.md): test
# faithfulness 0.68 (capital), 0.87 (demonym), 0.65 (antonym); causality 0.58 / 0.43 / 0.59, swap
# 0.84-0.87, random edits 0.00. With the notebook tests' small parameters the numbers mean nothing.

# %%
from probes.factual.lre_study import lre_study

t0 = time.perf_counter()
study = lre_study(model, lre_study_relation, n_candidates=lre_study_candidates, n_train=lre_study_train,
                  layers=[min(x, L - 1) for x in lre_study_layers], ranks=tuple(lre_study_ranks))
tick(f"LRE study ({lre_study_relation})", t0)
figs["lre_study"] = study.figure()
display(study)
figs["lre_study"]

# %% [markdown]
# ## 11. SAT probe: does attention to the subject predict a correct answer?
#
# Yuksekgonul et al. (2024): one feature per layer and head, the attention from the last prompt token
# to the subject's tokens; an L1 logistic regression (C chosen by cross-validation) predicts whether
# the model's top-1 token is the answer. Scores are out-of-fold, next to the model's confidence
# (probability of its own top token) and the mean attention over heads. On a 135M model and a few
# dozen prompts expect a **weak** probe, weaker than confidence. Measured on SmolLM2: 40 bundled
# capital prompts (accuracy 0.55): probe AUROC 0.73 (C = 0.3), confidence 0.81, mean attention 0.26
# (more attention to the subject went with *wrong* answers); 60 well-known countries (accuracy 0.80,
# only 12 errors): CV picked the smallest C, the probe is constant (AUROC 0.51) and confidence gives
# 0.70.

# %%
from probes.factual.sat_probe import sat_probe

t0 = time.perf_counter()
sat_facts = facts.by_relation("capital").sample(sat_n_prompts, seed=1)
sat = sat_probe(model, sat_facts)
tick(f"SAT probe ({sat_n_prompts} prompts)", t0)
display(sat.metrics().round(3))
figs["sat_probe_roc"] = sat.figure()
figs["sat_probe_roc"]

# %%
sat.top_heads(10)

# %% [markdown]
# ### Two constraints and full-answer labels, as in the paper
#
# The paper's harder prompts carry two constraints ("Name a country in Western Africa whose official
# language is French."). `sat_probe_constraints` decodes each prompt greedily for up to 15 tokens,
# labels it with a verifier over the **whole answer** (is the named country one of the valid ones?),
# and fits the probe on the attention to *each* constraint's tokens (2 × L × H features), against two
# label-free confidences: the completion's mean log-probability (the paper's baseline) and the first
# token's probability. Measured on SmolLM2 (REPRODUCTIONS.md, `--measure sat`): countries with two
# constraints, 200 prompts, accuracy 0.21: probe AUROC 0.65 [0.55, 0.75] against 0.69 for the mean
# log-probability and 0.71 for the first-token probability; with one constraint 0.87 / 0.88 / 0.93.

# %%
from probes.factual import country_prompts, sat_probe_constraints

t0 = time.perf_counter()
two = country_prompts(2, sat_n_two_constraints, seed=0)
print(two[0].prompt.splitlines()[0], "| constraints:", [c.text for c in two[0].constraints])
try:
    sat2 = sat_probe_constraints(model, two)
    tick(f"SAT probe, two constraints ({len(two)} prompts)", t0)
    display(sat2.metrics().round(3))
    figs["sat_probe_two_constraints"] = sat2.figure()
    display(figs["sat_probe_two_constraints"])
except wb.InputError as e:  # too few right (or wrong) answers among few prompts to cross-validate
    print("probe not fitted:", e)

# %% [markdown]
# ## 12. Export the figures
#
# PNG and HTML when a Chromium is available (`make system`), else HTML only; all HTML files share
# one `plotly.min.js`.

# %%
if export:
    paths = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    display(pd.DataFrame({"file": [str(p) for p in paths],
                          "KiB": [round(p.stat().st_size / 1024, 1) for p in paths]}))
print("section timings (s):", {k: round(v, 1) for k, v in timings.items()})
print(f"factual-recall notebook finished in {time.perf_counter() - t_start:.1f} s (after imports)")
