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
# # The efficiency lab: what a method saves, and what it changes inside the model
#
# `lab.effects(model, method, suite)` runs the unmodified model and an efficiency method side by side
# over the same tokens and returns an `EffectReport`:
#
# - **cost**: bytes of weights and KV cache, predicted by the method's cost model and measured from
#   the tensors really held (with whether the saving is *real* on this machine or *simulated*), and
#   prefill/decode ms per token measured in the same run as the baseline;
# - **quality**: perplexity on held-out corpus windows, next-token KL, fact accuracy, passkey accuracy;
# - **internals**: residual drift per layer, attention divergence per layer and head, attention-sink
#   mass, massive activations, DLA of the bundled facts (which heads and MLPs changed most),
#   transcoder features, concept scores.
#
# The baseline is computed once per model and suite and reused for every method. This notebook asks
# three questions a researcher asks, on SmolLM2:
#
# 1. Which efficiency method breaks the attention sink first?
# 2. Do different methods hurt factual recall through the same heads?
# 3. Which transcoder features die first?
#
# Methods come from lists in the parameters cell: any registered name (`efficiency.list_methods()`),
# KV eviction and quantization today; weight quantization, sparsity, pruning or low-rank methods are
# added to the same lists. The default sizes are small (a test run); set `suite = "quick"` or `"full"`
# for real numbers.

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct
suite = "notebook"  # "notebook" (the small suite below), "quick" or "full"
# strength sweeps: method name -> (knob, values from mild to strong)
sweeps = {"streaming_llm": ("ratio", [0.5, 0.875]), "snapkv": ("ratio", [0.5, 0.875])}
# combinations: each a list of (name, knobs), run together and each part alone
combinations = [[("streaming_llm", {"ratio": 0.875}), ("kivi", {"bits": 4})]]
cost_context = 4096  # context length for the predicted-bytes table
sink_drop = 0.2  # a sink counts as broken when its mass falls by this fraction
overlap_top = 10  # heads compared between methods (top-n by |ΔDLA|)
explorer_families = ["kv-eviction", "kv-quantization"]  # families offered by the lab widget
out_dir = "out/figures"
export = True

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(_k, _v)

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display

import efficiency
import lab
import workbench as wb

model = wb.load(model_name)
SMALL = lab.Suite("notebook", ppl_windows=1, ppl_tokens=128, kl_positions=16, internals_windows=1, probe_rows=4,
                  facts_per_relation=1, fact_context=16, passkey_n=1, passkey_tokens=160, timing_tokens=64,
                  decode_tokens=2, timing_repeats=1, calibration_n=2, calibration_tokens=64)
the_suite = SMALL if suite == "notebook" else lab.get_suite(suite)
print(the_suite.describe())
figs = {}
efficiency.list_methods()

# %% [markdown]
# ## 1. One method, every panel
#
# The first sweep entry at its strongest setting. The cost table shows the bytes the cost model
# predicts next to the bytes measured (they must agree), and whether the saving is real.

# %%
first_name, (first_knob, first_values) = next(iter(sweeps.items()))
reports = {}


def run(name, **knobs):
    r = lab.effects(model, (name, knobs), the_suite, progress=False)
    reports[r.method] = r
    return r


one = run(first_name, **{first_knob: first_values[-1]})
print(one.forward_passes, f"{one.seconds:.1f} s")
display(one.cost_table())
display(one.quality_table())
for note in one.notes:
    print("note:", note)
figs["lab_overview"] = one.figure("overview")
figs["lab_overview"]

# %%
for panel in ("drift", "attention", "sinks", "massive", "dla"):
    figs[f"lab_{panel}"] = one.figure(panel)
    figs[f"lab_{panel}"].show()
if one.features:
    figs["lab_features"] = one.figure("features")
    figs["lab_features"].show()
if one.concept:
    figs["lab_concepts"] = one.figure("concepts")
    figs["lab_concepts"].show()

# %% [markdown]
# ## 2. Which method breaks the attention sink first?
#
# Every method in `sweeps` at every strength. For each setting: the share of its target's bytes it
# saves (measured; the weights or the KV cache, whichever it compresses more, so KV and weight methods
# share one axis), the sink mass (attention on position 0, mean over heads and tail queries) before and
# after, and the peak token's residual norm (the massive activation). A method "breaks" the sink at the
# first setting where the mean sink mass falls by more than `sink_drop` of its baseline value, or the
# massive activation moves by more than that.

# %%
rows = []
for name, (knob, values) in sweeps.items():
    for v in values:
        r = reports.get(efficiency.get_method(name, **{knob: v}).label) or run(name, **{knob: v})
        m = r.measured
        saved = max(1 - m["weight_bytes"] / m["baseline_weight_bytes"], 1 - m["kv_bytes"] / m["baseline_kv_bytes"])
        sink_b, sink_m = float(r.sink_base.mean()), float(r.sink_method.mean())
        massive = float(np.nanmax(np.abs(r.massive["norm_method"] / r.massive["norm_base"] - 1)))
        rows.append({"method": name, knob: v, "label": r.method, "bytes saved": saved, "sink mass": sink_m,
                     "sink mass (baseline)": sink_b, "sink change": sink_m / sink_b - 1,
                     "layers whose sink lost >20%": int(((r.sink_method.mean(1) / r.sink_base.mean(1)) < 0.8).sum()),
                     "massive norm change (max)": massive, "perplexity": r.quality["perplexity"],
                     "saving": r.saving})
sinks = pd.DataFrame(rows)
display(sinks)

fig = go.Figure()
for name, g in sinks.groupby("method", sort=False):
    fig.add_scatter(x=g["bytes saved"], y=g["sink change"], mode="lines+markers", name=name, text=g.label)
fig.add_hline(y=-sink_drop, line_dash="dash", annotation_text=f"-{sink_drop:.0%}: broken")
fig.update_layout(title="Sink mass change against bytes saved",
                  xaxis_title="share of its target's bytes saved (weights or KV, measured)",
                  yaxis_title="relative change of sink mass", template="plotly_white")
figs["lab_sink_break"] = fig
fig

# %%
broken = sinks[(sinks["sink change"] < -sink_drop) | (sinks["massive norm change (max)"] > sink_drop)]
if broken.empty:
    print(f"No setting lowered the sink mass by more than {sink_drop:.0%} or moved the massive activation that much.")
else:
    first = broken.sort_values("bytes saved").iloc[0]
    print(f"First to break the sink: {first.label} (saving {first['bytes saved']:.0%} of its target's bytes; sink mass "
          f"{first['sink mass (baseline)']:.3f} -> {first['sink mass']:.3f}).")
    for name, g in broken.groupby("method", sort=False):
        print(f"  {name}: breaks at {g.sort_values('bytes saved').iloc[0].label}")

# %% [markdown]
# ## 3. Do methods hurt factual recall through the same heads?
#
# For each method at its strongest setting: the change of every head's direct logit attribution to
# the answer (answer minus the mean of the other candidates), averaged over the facts. Two methods hurt
# recall "through the same heads" when their top heads by |ΔDLA| overlap (Jaccard) and |ΔDLA| is
# correlated over all heads (Spearman). Quantization and sparsity methods join this table when their
# names are added to `sweeps`.

# %%
strongest = [efficiency.get_method(n, **{k: vs[-1]}) for n, (k, vs) in sweeps.items()]
cmp = lab.compare_effects(model, strongest, the_suite, progress=False, reuse=list(reports.values()))
overlap = cmp.head_overlap(overlap_top)
display(overlap)
figs["lab_head_overlap"] = cmp.figure("overlap", n=overlap_top)
for label, r in cmp.reports.items():
    print(label, "-> top heads:", r.top_changed_heads(5), f"fact accuracy {r.quality['fact_accuracy_base']:.2f} -> "
          f"{r.quality['fact_accuracy']:.2f}")
figs["lab_head_overlap"]

# %% [markdown]
# ## 4. Which transcoder features die first?
#
# The shipped transcoders (layers 8 and 15) read the MLP inputs of the tail tokens. A feature *dies*
# when it fires in the baseline but never under the method. For each sweep, the features dead at the
# mildest setting are the first to die; the table lists them with their baseline firing rate.

# %%
dead_rows = []
for name, (knob, values) in sweeps.items():
    for v in values:
        r = reports[efficiency.get_method(name, **{knob: v}).label]
        if not r.features:
            continue
        df = r.dying_features(10**6)
        df = df[df.dead]
        dead_rows += [{"method": name, knob: v, "layer": int(x.layer), "feature": int(x.feature),
                       "freq_base": x.freq_base} for x in df.itertuples()]
dead = pd.DataFrame(dead_rows) if dead_rows else pd.DataFrame(columns=["method", "layer", "feature", "freq_base"])
if dead.empty:
    print("No feature died in these settings (features panel:", "on" if one.features else "off", ")")
else:
    firsts = []
    for name, (knob, values) in sweeps.items():
        d = dead[dead.method == name]
        if not d.empty:
            v0 = [v for v in values if v in set(d[knob])][0]
            firsts.append(d[d[knob] == v0].sort_values("freq_base", ascending=False).head(5))
    display(pd.concat(firsts) if firsts else dead.head())
    shared = dead.groupby(["layer", "feature"]).method.nunique()
    print("features dying under more than one method:", shared[shared > 1].index.tolist()[:20])
for name, (knob, values) in sweeps.items():
    r = reports[efficiency.get_method(name, **{knob: values[-1]}).label]
    if r.features:
        print(name, {l: f"kept {f['kept']:.2f}, corr {f['correlation']:.3f}, dead {f['n_dead']}/{f['n_active_base']}"
                     for l, f in r.features.items()})

# %% [markdown]
# ## 5. Combinations against each part alone
#
# Each combination runs as one method (interventions composed, cache policies chained) and each part
# runs alone, against the same baseline. Do the savings add up, does the damage? The second table is
# the cost model's prediction at `cost_context` tokens (no run needed).

# %%
combo_methods = [lab.resolve_method(c) for c in combinations]
combos = lab.compare_effects(model, combo_methods, the_suite, progress=False, reuse=list(reports.values()))
reports.update(combos.reports)
display(combos.combination_table())
pred = []
for c in combo_methods:
    for m in lab.methods.parts(c) + [c]:
        cost = m.cost(model, cost_context)
        pred.append({"method": m.label, "weights MiB": cost.weight_bytes / 2**20, "KV MiB": cost.kv_bytes / 2**20,
                     "total vs baseline": cost.total_ratio, "saving": cost.saving})
display(pd.DataFrame(pred))
figs["lab_combinations"] = combos.figure("overview")
figs["lab_combinations"]

# %% [markdown]
# ## 6. The quality/cost frontier
#
# Every method run so far: perplexity against the bytes held. In JupyterLab, `frontier.widget()` makes
# each point clickable: the clicked method's internals panel appears below the figure.

# %%
front = lab.frontier(model, list(reports.values()), x="bytes", y="perplexity")
display(front.to_frame())
figs["lab_frontier"] = front.figure()
front_widget = front.widget(panel="sinks")
front_widget.show(next(iter(reports)))
front_widget

# %% [markdown]
# ## 7. The lab widget
#
# Choose a family, a method and its strength, press *run*: cost, quality and the internals panel update
# in place (the baseline is reused); *export* writes the panel shown.

# %%
explorer = lab.lab_explorer(model, suite=the_suite, families=explorer_families, reuse=list(reports.values()))
explorer.run(first_name, **{first_knob: first_values[0]})
explorer.show_panel("attention")
explorer

# %% [markdown]
# ## 8. Export

# %%
if export:
    written = wb.export_figures(figs, out_dir, formats="auto", include_plotlyjs="directory")
    print(f"wrote {len(written)} files to {out_dir}")
