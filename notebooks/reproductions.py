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
# # Reproductions: each paper's headline claim next to our number
#
# Every method in the workbench comes from a paper. This notebook shows, claim by claim, what
# the paper found (its models, its data, its number), what we measure on SmolLM2-135M, and a
# verdict computed from our numbers by a fixed rule: **reproduced**, **partly**, **not at 135M**
# (the effect needs scale or fine-tuning the paper had), **refuted** (a direct contradiction at our
# scale), or **not yet measured** (the results file or key is missing; the row names the command).
#
# 1. the table from the results files in `benchmarks/results/` (what `REPRODUCTIONS.md` shows);
# 2. the quick rows re-measured live on the model (sinks, massive Q/K dims, KV cache at a quarter
#    of its size), next to the saved numbers;
# 3. the registry itself: where each number comes from and the rule that judges it.
#
# The claims live in `lab/reproductions/papers/` (one module per paper); the verdict rules and how
# to add a claim: `docs/reproductions.md`. `python scripts/reproductions.py --quick` rewrites
# `REPRODUCTIONS.md` after re-measuring the quick rows.

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct (the quick rows need its tokenizer and context)
results_dir = None  # None: the repository's benchmarks/results
out_dir = "out/figures"  # where figures and the fresh quick results go (relative to the kernel's working dir)
export = True  # write the figures to out_dir at the end
rerun_quick = True  # re-measure the quick rows live
quick_sections = ["sinks", "qk_disruption", "kv"]  # which quick sections to re-measure
sink_tokens = 256  # tokens of held-out corpus text for the sink / massive-value statistics
disruption_passkey_n = 6  # passkey prompts for the Q/K disruption test
passkey_n = 5  # passkey prompts for the KV-cache rows
passkey_tokens = 256  # tokens per KV passkey prompt
ppl_n = 2  # texts for the KV perplexity rows
ppl_tokens = 512  # tokens per perplexity text

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

import time
from pathlib import Path

import pandas as pd
from IPython.display import display

import workbench as wb
from lab.reproductions import QUICK_STEM, RESULTS_DIR, claims, load_results, reproduction_table
from lab.reproductions.quick import QuickSizes, run_quick
from workbench.paths import atomic_write_json

pd.set_option("display.max_colwidth", 120)
figs = {}
results_path = Path(results_dir) if results_dir else RESULTS_DIR
saved = load_results(results_path)
print(f"results files in {results_path}: {sorted(k for k in saved if not k.startswith('_')) or 'none'}")

# %% [markdown]
# ## 1. The table from the saved results
#
# One row per claim. A row with a number got it from the file and key listed in its `sources`; a row
# without one says *not yet measured* and names the command that would measure it (no number is
# typed by hand).

# %%
table = reproduction_table(results_path)
print(table.summary())
display(table.to_frame()[["paper", "claim", "paper_number", "ours", "verdict"]])

# %%
figs["reproductions_table"] = table.figure()
figs["reproductions_table"]

# %%
missing = table.to_frame().query("verdict == 'not yet measured'")[["key", "command"]]
print(f"{len(missing)} rows not yet measured; the commands that measure them:")
display(missing.groupby("command").key.apply(", ".join).reset_index())

# %% [markdown]
# ## 2. The quick rows, re-measured
#
# Seconds per section on SmolLM2: one forward for the sink statistics (attention mass on position
# 0, value drains, the residual peak, Q/K/V dim concentration and the low-frequency RoPE share);
# passkey versus facts with the largest Q/K dim of every head set to its mean; passkey accuracy and
# perplexity with a quarter of the KV cache kept (StreamingLLM with and without its sink tokens,
# H2O, SnapKV, ZigZagKV, KIVI at 2 and 4 bits). The fresh numbers go to `out_dir`, not to
# `benchmarks/results` (run `python scripts/reproductions.py --quick` for that).

# %%
if rerun_quick:
    model = wb.load(model_name) if model_name else wb.load()
    sizes = QuickSizes(sink_tokens=sink_tokens, disruption_passkey_n=disruption_passkey_n, passkey_n=passkey_n,
                       passkey_tokens=passkey_tokens, ppl_n=ppl_n, ppl_tokens=ppl_tokens)
    t0 = time.perf_counter()
    fresh = run_quick(model, sizes, sections=quick_sections, log=print)
    print(f"quick rows in {time.perf_counter() - t0:.1f} s")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out_dir) / f"{QUICK_STEM}.json", fresh)
    quick_keys = [c.key for c in claims()
                  if any(s == QUICK_STEM for n in c.numbers for s, _ in getattr(n, "sources", ()))]
    now = reproduction_table(results={QUICK_STEM: fresh}).to_frame().set_index("key").loc[quick_keys]
    before = table.to_frame().set_index("key").loc[quick_keys]
    side = pd.DataFrame({"claim": now.claim, "saved": before.ours, "saved verdict": before.verdict,
                         "now": now.ours, "verdict now": now.verdict})
    display(side)

# %% [markdown]
# The sink rows hold on SmolLM2 at any size: position 0 is the sink (there is no BOS token) and
# carries a residual norm hundreds of times the median token's. The KV rows move with the number
# of prompts: with a handful of passkey prompts one success is a large step.

# %% [markdown]
# ## 3. The registry: sources and rules
#
# Each claim lists its numbers (results file and key path, first available source wins) and the
# rule that turns them into a verdict. The reason column shows the rule's comparison.

# %%
reg = table.to_frame()[["key", "verdict", "reason", "sources", "command", "note"]]
display(reg)

# %%
if export:
    paths = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    print(f"{len(paths)} files written to {out_dir}")
