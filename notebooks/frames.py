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
# # Frames: words and concepts as frames of token vectors, and concept-guided decoding
#
# The **Frame Representation Hypothesis** (Valois, Souza, Shimomoto & Fukui, TACL 2025) extends
# the linear representation hypothesis to multi-token words: a word of t tokens is the *frame*
# (ordered list) of its t token vectors, a concept is the orthonormal frame closest to the sum
# of its WordNet synset's word frames, and text can be scored against, and steered toward, a
# concept. This notebook runs all of it on **SmolLM2-135M-Instruct** with offline WordNet 3.0:
#
# 1. the whitened token space (unembedding rows, centred, Σ^{-1/2});
# 2. word frames and their ranks over WordNet lemmas (the paper: over 99% full rank);
# 3. concept frames for every synset with ≥ 3 lemmas, and concept-versus-word correlations;
# 4. concept scores along a text;
# 5. top-k concept-guided decoding, toward and away from woman − man, next to greedy decoding;
# 6. a bias probe: does that guidance shift gendered words in completions (with a bootstrap CI)?
# 7. an interactive explorer; 8. export of every figure.
#
# Formulas, defaults, measured numbers and papers: `docs/frames.md`. WordNet comes from the Debian
# package `wordnet-base` (`make system`).

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct; or "tiny-llama", or a local HF folder
out_dir = "out/figures"  # where the figures go (relative to the kernel's working directory)
export = True  # write the figures to out_dir at the end
frame_k = 3  # frame width k: max tokens per word (the paper's default)
n_rank_words = None  # WordNet lemmas for the rank statistics (None: all ~148k)
bank_pos = None  # part of speech for the concept bank: None (all), "n", "v", "a", "r"
bank_max_synsets = None  # cap on concept frames built (None: every synset with >= 3 lemmas)
n_corr_concepts = 500  # synsets sampled for the concept-versus-word correlations
guide_k = 2  # candidates per step for guided decoding
guide_tokens = 16  # tokens generated per guided decoding
n_bias_prompts = 24  # occupation prompts in the bias probe (24 bundled)
bias_tokens = 16  # tokens per completion in the bias probe
bias_k = 3  # candidates per step in the bias probe

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import random
import time

import pandas as pd
from IPython.display import HTML, display

import workbench as wb
from probes.frames import guided_generate
from probes.frames import (bias_probe, concept, concept_bank, concept_scores, concept_word_correlation,
                           frame_correlation, frames_explorer, rank_statistics, token_space, word_frame,
                           wordnet_lemmas)

t_start = time.perf_counter()
figs = {}  # name -> figure, exported at the end
timings = {}


def tick(name, t0):
    timings[name] = time.perf_counter() - t0
    print(f"[{name}: {timings[name]:.1f} s]")


model = wb.load(model_name) if model_name else wb.load()
model

# %% [markdown]
# ## 1. The token space
#
# Every row of the unembedding U (V × d) becomes g(y) = U[y] Σ^{-1/2} − mean, where Σ is the
# covariance of the rows; eigenvalues ≤ 1e-6 are dropped. The g(y) have identity covariance
# (the "causal inner product" of Park et al.). On SmolLM2 Σ's eigenvalues span 2.5e-4 … 0.64,
# so all 576 are kept and the whitening is well-posed.

# %%
t0 = time.perf_counter()
space = token_space(model)
tick("token space", t0)
figs["token_space_spectrum"] = space.figure()
display(space)
figs["token_space_spectrum"]

# %% [markdown]
# ## 2. Word frames and their ranks
#
# A word of t ≤ k tokens is the d × k frame of its token vectors (zero columns after t). Its rank
# says whether the token vectors are linearly independent. The paper reports over 99% of words
# are full-rank frames; the failures are mostly repeated tokens (`bye-bye`, `100000`).

# %%
for w in (" woman", " adult female", " firefighter", "bye-bye"):
    display(word_frame(model, w, k=max(frame_k, len(model.tokenizer(w, add_special_tokens=False)["input_ids"]))))

# %%
t0 = time.perf_counter()
lemmas = wordnet_lemmas()
if n_rank_words is not None:
    lemmas = random.Random(0).sample(lemmas, min(n_rank_words, len(lemmas)))
ranks = rank_statistics(model, lemmas, min_tokens=2, max_tokens=8, space=space)
tick("rank statistics", t0)
display(ranks)
display(ranks.summary().round(4))
figs["rank_histogram"] = ranks.figure()
figs["rank_histogram"]

# %%
ranks.deficient().head(12)

# %% [markdown]
# ## 3. Concept frames
#
# A synset's concept frame is the orthogonal-Procrustes (polar) factor of the sum of its lemmas'
# word frames (four spellings each: `" w"`, `"w "`, `" w "`, `"w"`). Here every synset with at
# least 3 lemmas that fit in k tokens. A good concept frame correlates more with its own words
# than with other concepts' words (measured on SmolLM2, 500 synsets: 13.7 vs 2.7, unnormalised).

# %%
t0 = time.perf_counter()
bank = concept_bank(model, min_lemmas=3, k=frame_k, pos=bank_pos, max_synsets=bank_max_synsets, space=space)
tick("concept bank", t0)
display(bank)
bank.to_frame().head(8)

# %%
t0 = time.perf_counter()
cw = concept_word_correlation(model, bank, n_concepts=min(n_corr_concepts, len(bank)), space=space)
tick("concept vs word correlation", t0)
display(cw)
figs["concept_vs_word"] = cw.figure()
figs["concept_vs_word"]

# %% [markdown]
# Gender concepts for the rest of the notebook. `woman.n.01` and `man.n.01` have only two lemmas
# each, so they are built on their own (the bank keeps ≥ 3). The combined concept
# woman − man is Procrustes(C_woman − C_man).

# %%
woman, man = concept(model, "woman.n.01", k=frame_k), concept(model, "man.n.01", k=frame_k)
woman_man = woman - man
display(woman, man, woman_man)
pd.Series({"⟨woman, woman⟩": float(frame_correlation(woman.frame, woman.frame)),
           "⟨woman, man⟩": float(frame_correlation(woman.frame, man.frame)),
           "⟨woman − man, woman⟩": float(frame_correlation(woman_man.frame, woman.frame)),
           "⟨woman − man, man⟩": float(frame_correlation(woman_man.frame, man.frame))}).round(3)

# %% [markdown]
# ## 4. Concept scores along a text
#
# The last hidden states (after the final norm) are cut into windows of k positions and each
# window is correlated with the concept frame. (As in the reference code, the hidden states are
# in raw model space while the concept lives in the whitened token space.)

# %%
text = "My grandmother and her sister baked bread, while the king and his sons rode out to war."
scores = concept_scores(model, text, [woman, man, woman_man])
display(scores)
figs["concept_scores"] = scores.figure()
figs["concept_scores"]

# %% [markdown]
# ## 5. Concept-guided decoding
#
# At each step the top-k next tokens are run as one batch against the KV cache; the candidate
# whose hidden state raises the windowed concept score most is kept. k = 1 is exactly greedy
# decoding (tested). Toward woman − man and away from it (= toward man − woman):

# %%
prompt = "The nurse finished the night shift and"
t0 = time.perf_counter()
toward = guided_generate(model, prompt, woman_man, k=guide_k, max_new_tokens=guide_tokens, direction="toward")
away = guided_generate(model, prompt, woman_man, k=guide_k, max_new_tokens=guide_tokens, direction="away",
                       greedy=False)
tick("guided decoding", t0)
print(f"guided decoding speed: {toward.tokens_per_s:.1f} tok/s (k = {guide_k})")
display(HTML(toward._repr_html_()), HTML(away._repr_html_()))
figs["guided_toward"] = toward.figure()
figs["guided_toward"]

# %%
toward.to_frame()

# %% [markdown]
# ## 6. Bias probe
#
# Over gender-neutral occupation prompts, each continuation (greedy, toward woman − man, away
# from it) gets the score #female words − #male words. The statistic is the paired shift against
# greedy, with a bootstrap 95% CI over prompts. At 135M parameters guidance is weak: measured on
# all 24 prompts (16 tokens, k = 3) the shift toward woman − man is +0.12 [−0.21, +0.50] and away
# from it 0.00 [−0.50, +0.50]; read the CI, not single samples.

# %%
t0 = time.perf_counter()
bias = bias_probe(model, concept=woman_man, k=bias_k, max_new_tokens=bias_tokens, n_prompts=n_bias_prompts)
tick("bias probe", t0)
display(bias)
figs["bias_probe"] = bias.figure()
figs["bias_probe"]

# %%
bias.to_frame().pivot(index="prompt", columns="condition", values="text").head(8)

# %% [markdown]
# ## 7. Explorer
#
# Type a text and pick a concept (any synset name, or `A - B`) to see its per-token scores; pick
# k, a direction and a prompt and press *Generate* for guided against greedy decoding.

# %%
explorer = frames_explorer(model, k=guide_k, max_new_tokens=min(guide_tokens, 12))
explorer

# %% [markdown]
# ## 8. Export the figures

# %%
if export:
    paths = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    display(pd.DataFrame({"file": [str(p) for p in paths],
                          "KiB": [round(p.stat().st_size / 1024, 1) for p in paths]}))
print("section timings (s):", {k: round(v, 1) for k, v in timings.items()})
print(f"frames notebook finished in {time.perf_counter() - t_start:.1f} s (after imports)")
