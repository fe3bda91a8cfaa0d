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
# # Quantization: weights, activations, rotations, and where it breaks inside the model
#
# `efficiency.quant` quantizes SmolLM2's weights (RTN, GPTQ), its activations (per token, W8A8 / W4A8 /
# W4A4), its KV cache (KIVI), with or without rotating the residual stream first (QuaRot's randomized
# Hadamard, a random orthogonal matrix, DFRot's refined rotation), plus the one real CPU speed path, fbgemm
# int8. Every method is an intervention: it edits the weights inside `with model.intervene(...)` and puts
# them back bit for bit afterwards.
#
# **What is real and what is simulated.** Below 8 bits nothing runs faster on a CPU with stock PyTorch: the
# weights are *fake-quantized* (rounded to the grid, stored back as float32) so the model computes exactly
# what a packed kernel would, and the packed codes are held next to them; the byte counts below are those of
# the packed form. Activation quantization is simulated the same way. Only `int8_dynamic` (fbgemm) saves
# time and memory for real, and KIVI's packed KV cache saves memory for real.
#
# **One caveat specific to this model.** SmolLM2's float weights were dequantized from a GGUF Q4_1 file:
# every linear weight is already on an asymmetric 4-bit grid with groups of 32 inputs. So "4 bits, group 32,
# asymmetric" reproduces the weights exactly and tells nothing; per-channel grids, other group sizes, 3 and
# 2 bits, and all activation quantization are real experiments.
#
# **Data.** Calibration (GPTQ, DFRot) uses one source of the bundled corpus (WordNet glosses); quality is
# measured on the other (paragraphs of the Python documentation), which shares nothing with it.

# %% tags=["parameters"]
model_name = None  # None: the bundled SmolLM2-135M-Instruct
eval_windows = 2  # evaluation windows of held-out text (Python docs)
eval_tokens = 2048  # tokens per evaluation window
kl_tokens = 512  # tokens per window used for the next-token KL
gptq_samples = 8  # GPTQ calibration windows (WordNet glosses)
gptq_seq_len = 256  # tokens per GPTQ window
dfrot_tokens = 512  # DFRot's one calibration sample
n_facts = 60  # bundled facts for the accuracy column
n_passkey = 3  # passkey prompts
passkey_tokens = 256  # passkey prompt length
explain_tokens = 96  # length of the text the per-token analyses run on
table_methods = ["RTN W3 per-channel", "GPTQ W3 per-channel", "W4A4 (no rotation)", "W4A4 RO", "W4A4 RH (QuaRot)",
                 "W4A4 DFRot", "int8 dynamic"]
spread_rotations = ["none", "rh", "ro"]  # rotations compared in the outlier-spread figure
error_methods = ["W4A4 (no rotation)", "W4A4 RH (QuaRot)"]  # methods of the per-token error figures
dla_method = "RTN W3 per-channel"  # weight-only, so the DLA decomposition stays exact
int8_variants = [{}, {"act_ranges": "tensor"}, {"rotation": "rh"}, {"rotation": "rh", "online_had": True}]  # section 8
out_dir = "out/figures"
export = True

# %%
import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}.items():
    os.environ.setdefault(_k, _v)

from contextlib import nullcontext

import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import display

import efficiency as ef
import workbench as wb
from efficiency.kv.harness import perplexity
from workbench.texts import long_texts
from efficiency.quant import quantization_error, quantization_explorer, rotation_spread
from probes.sinks import massive_activations, sink_report
from probes.factual import direct_logit_attribution, evaluate_facts, load_facts
from probes.transcoders import load_corpus
from workbench.texts.tasks import passkey_prompts

figs = {}
model = wb.load(model_name)
model

# %% [markdown]
# ## 1. The methods, and the data
#
# Every method is a registered `EfficiencyMethod`; `list_methods` gives the knobs and their ranges.

# %%
display(ef.list_methods("weight-quantization"))
display(ef.list_methods("activation-quantization")[["name", "calibrates"]])

CALIB_SOURCE, EVAL_SOURCE = "wordnet", "python-docs"
calibration = load_corpus("train", sources=[CALIB_SOURCE])
eval_texts = long_texts(model, eval_windows, eval_tokens, corpus="\n\n".join(load_corpus("all", sources=[EVAL_SOURCE])))
print(f"calibration: {len(calibration)} documents of {CALIB_SOURCE}; evaluation: {len(eval_texts)} windows of "
      f"{eval_tokens} tokens of {EVAL_SOURCE}")

# %% [markdown]
# ## 2. The weights are already 4-bit
#
# Round-to-nearest with 4 bits, groups of 32 inputs, asymmetric (w ≈ s·q + m) gives back every linear weight to
# the bit; per channel it does not. The packed form of that setting is what the GGUF file held.

# %%
from efficiency.quant import quantize_weight

rows = []
for kind in model.linear_kinds:
    W = model.linear_weight(14, kind)
    rows.append({"linear (layer 14)": kind, "shape": tuple(W.shape),
                 "max |Δ| 4-bit g32 asym": float((quantize_weight(W, 4, 32).dequantize() - W).abs().max()),
                 "max |Δ| 4-bit per channel": float((quantize_weight(W, 4, None).dequantize() - W).abs().max()),
                 "max |Δ| 3-bit g32": float((quantize_weight(W, 3, 32).dequantize() - W).abs().max())})
pd.DataFrame(rows)

# %% [markdown]
# ## 3. Quality, bytes and time
#
# One row per method: perplexity on held-out windows (second half of each window scored), next-token KL
# against the float model, top-1 accuracy on the bundled facts, passkey retrieval, the weight bytes (packed
# for simulated methods), and ms per decoded token at ~256 tokens of context through the workbench
# (simulated methods compute in float32 and are *slower*; only int8 is a speed path). The benchmark
# (`benchmarks/bench_quant.py`) runs the full grid.

# %%
SPECS = {
    "RTN W8 per-channel": ("rtn", {"bits": 8, "sym": True}),
    "RTN W4 per-channel": ("rtn", {"bits": 4}),
    "RTN W4 g32 (= Q4_1)": ("rtn", {"bits": 4, "group": 32}),
    "RTN W3 per-channel": ("rtn", {"bits": 3}),
    "GPTQ W3 per-channel": ("gptq", {"bits": 3, "n_samples": gptq_samples, "seq_len": gptq_seq_len}),
    "W8A8 (no rotation)": ("wa_quant", {"w_bits": 8, "a_bits": 8}),
    "W4A4 (no rotation)": ("wa_quant", {"w_bits": 4, "a_bits": 4}),
    "W4A4 RO": ("quarot", {"rotation": "ro"}),
    "W4A4 RH (QuaRot)": ("quarot", {}),
    "W4A4 RH + KV4": ("quarot", {"kv_bits": 4}),
    "W4A4 DFRot": ("dfrot", {"calib_tokens": dfrot_tokens}),
    "int8 dynamic": ("int8_dynamic", {}),
}
methods = {}


def method(label):
    """The (calibrated) method of a table row, built once."""
    if label not in methods:
        name, knobs = SPECS[label]
        m = ef.get_method(name, **knobs)
        if m.needs_calibration or getattr(m, "calibrates", False):
            m.prepare(model, calibration)
        methods[label] = m
    return methods[label]


facts = list(load_facts())[:: max(1, len(load_facts()) // n_facts)][:n_facts]
passkeys = passkey_prompts(model, n_passkey, n_tokens=passkey_tokens, seed=7)
speed_ids = model.tokenize(passkey_prompts(model, 1, n_tokens=256, seed=1)[0].prompt)[0]
with torch.no_grad():
    ref_lp = [torch.log_softmax(model.run(model.tokenize(t)[0][:, :kl_tokens]).logits[0].float(), -1) for t in eval_texts]


def ms_per_token(steps=4):
    from workbench.kv_cache import KVCache
    import time

    cache = KVCache.empty(model)
    with model.session() as s:
        tok = s.forward_cached(cache, speed_ids)[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = s.forward_cached(cache, tok)[:, -1:].argmax(-1)
    return 1e3 * (time.perf_counter() - t0) / steps


def evaluate(label):
    m = None if label == "fp32" else method(label)
    iv = None if m is None else m.intervention(model)
    policy = (lambda: None) if m is None else (lambda: m.cache_policy(model))
    with torch.no_grad(), (model.intervene(iv) if iv is not None else nullcontext()):
        ppl = perplexity(model, eval_texts, policy=policy(), prefix=0.5).perplexity
        kl = 0.0 if m is None else sum(
            float((lp.exp() * (lp - torch.log_softmax(model.run(model.tokenize(t)[0][:, :kl_tokens]).logits[0].float(), -1)))
                  .sum(-1).mean()) for t, lp in zip(eval_texts, ref_lp)) / len(eval_texts)
        acc = float(evaluate_facts(model, facts).correct.mean())
        pk = sum(model.generate(s.prompt, max_new_tokens=len(s.answer_token_ids), cache_policy=policy()).text.strip()
                 == s.answer.strip() for s in passkeys) / len(passkeys)
        ms = ms_per_token()
    cost = None if m is None else m.cost(model, eval_tokens)
    return {"method": label, "perplexity": ppl, "KL": kl, "fact acc": acc, "passkey": pk,
            "weight MiB": (model.parameter_bytes() if m is None else cost.weight_bytes) / 2**20,
            "KV MiB @ window": (ef.kv_bytes_full(model, eval_tokens) if m is None else cost.kv_bytes) / 2**20,
            "ms/token": ms, "saving": "-" if m is None else m.saving}


table = pd.DataFrame([evaluate(label) for label in ["fp32"] + list(table_methods)])
table["Δ ppl %"] = 100 * (table.perplexity / table.perplexity[0] - 1)
table

# %% [markdown]
# The claims to check (each holds or not at 135M; the benchmark repeats them on more windows):
# rotation narrows the W4A4 gap (QuaRot), DFRot is no worse than the randomized Hadamard (DFRot), and GPTQ
# beats RTN at 3 bits per channel.

# %%
ppl = dict(zip(table.method, table.perplexity))


def verdict(a, b, no_worse=False):
    if a not in ppl or b not in ppl:
        return "not in this table"
    ok = ppl[a] <= ppl[b] if no_worse else ppl[a] < ppl[b]
    return f"{'holds' if ok else 'does NOT hold'}: {a} {ppl[a]:.3f} vs {b} {ppl[b]:.3f}"


print("rotation narrows the W4A4 gap:", verdict("W4A4 RH (QuaRot)", "W4A4 (no rotation)"))
print("RH better than RO:            ", verdict("W4A4 RH (QuaRot)", "W4A4 RO"))
print("DFRot no worse than RH:       ", verdict("W4A4 DFRot", "W4A4 RH (QuaRot)", no_worse=True))
print("GPTQ beats RTN (W3, channel): ", verdict("GPTQ W3 per-channel", "RTN W3 per-channel"))
fig = go.Figure(go.Bar(x=table.method, y=table["Δ ppl %"], marker_color=["#888" if s == "-" else "#2a7" if s == "real"
                                                                         else "#d62728" for s in table.saving]))
fig.update_layout(title="Perplexity change on held-out text (green: real saving; red: simulated, packed bytes only)",
                  yaxis_title="Δ perplexity (%)", height=420)
figs["quant_quality"] = fig
fig

# %% [markdown]
# ## 4. How a rotation spreads the massive activation
#
# After the norm, the attention sink (position 0; from block 11 on its residual carries ~2·10⁴ in dimension
# 507) is nearly one-hot: one coordinate holds ~99% of its norm, max/rms ≈ √576 = 24. The other tokens
# have outliers too (the same dimension, smaller). A randomized Hadamard turns the one-hot sink into a flat
# ±1 vector, which a symmetric per-token grid represents almost exactly; a random orthogonal matrix turns it
# into a Gaussian-looking vector with ordinary error. Both flatten the other tokens about equally. DFRot's
# refined rotation is shown when it is in the table above.

# %%
explain_text = long_texts(model, 1, explain_tokens, corpus="\n\n".join(load_corpus("all", sources=[EVAL_SOURCE])))[0]
rotations = list(spread_rotations)
if "W4A4 DFRot" in methods:
    rotations = {r: None for r in rotations} | {"dfrot": methods["W4A4 DFRot"].residual_matrix(model)}
spread = rotation_spread(model, explain_text, rotations=rotations if isinstance(rotations, dict) else rotations)
display(spread)
figs["rotation_spread_coordinates"] = spread.figure("coordinates")
figs["rotation_spread_layers"] = spread.figure("layers")
display(figs["rotation_spread_coordinates"])
figs["rotation_spread_layers"]

# %% [markdown]
# ## 5. Which tokens and layers carry the error
#
# The quantized model against its float twin (the same rotation, no grids), per token and layer: the
# residual error after every block, the *local* error of the activation grid on each linear's input, and the
# next-token KL. The sink is red.

# %%
errors = {}
for label in error_methods:
    errors[label] = quantization_error(model, method(label), explain_text)
    display(errors[label])
    figs[f"error_layers_{label}"] = errors[label].figure("layers")
    display(figs[f"error_layers_{label}"])
pd.concat({k: v.by_layer().set_index("layer")[["resid_sink", "resid_others_median"]] for k, v in errors.items()}, axis=1).tail(8)

# %% [markdown]
# ## 6. What quantization does to the sink, the massive activation and the facts
#
# Before and after, on the same text: attention mass on the sink per head (`probes.sink_report`) and the
# massive activation's size (`probes.massive_activations`) under the last method of section 5; then the
# direct logit attribution of a bundled fact (`probes.factual`) under a weight-only method, whose DLA stays
# exact (with quantized activations the heads' outputs are no longer z·W_O, so DLA would not add up): which
# heads and MLPs changed their contribution most. For a rotated model the massive value no longer sits in
# dimension 507 (the basis changed); its norm is what to compare.

# %%
fact = facts[0]
probe_label = error_methods[-1]


def internals(iv):
    with model.intervene(iv) if iv is not None else nullcontext():
        return sink_report(model, explain_text), massive_activations(model, explain_text)


before = internals(None)
after = internals(method(probe_label).intervention(model))
L = model.info.n_layers
fig = go.Figure()
fig.add_scatter(x=list(range(L)), y=before[0].layer_mass0.tolist(), name="float")
fig.add_scatter(x=list(range(L)), y=after[0].layer_mass0.tolist(), name=probe_label)
fig.update_layout(title="Attention mass on the sink (position 0), mean over heads", xaxis_title="layer",
                  yaxis_title="mass", height=360)
figs["sink_mass"] = fig
display(fig)
sink_change = (after[0].mass0 - before[0].mass0).abs()
l, h = divmod(int(sink_change.argmax()), sink_change.shape[1])
print(f"largest change of sink mass: L{l}H{h}, {float(before[0].mass0[l, h]):.2f} -> {float(after[0].mass0[l, h]):.2f}")
mass = pd.DataFrame({"stage": before[1].stage_labels, "float peak norm": before[1].norms[0, :, 0].tolist(),
                     f"{probe_label} peak norm": after[1].norms[0, :, 0].tolist(),
                     "float ratio to median": before[1].ratio[0].tolist(),
                     f"{probe_label} ratio": after[1].ratio[0].tolist()})
display(mass.iloc[[0, 6, 12, 13, 20, 28, 30]])

# %%
dla_before = direct_logit_attribution(model, fact)
with model.intervene(method(dla_method).intervention(model)):
    dla_after = direct_logit_attribution(model, fact)
heads_change = dla_after.heads[..., 0] - dla_before.heads[..., 0]  # (L, H) DLA of the answer logit
mlps_change = dla_after.mlps[..., 0] - dla_before.mlps[..., 0]  # (L,)
print(f"fact: {fact.prompt!r} -> {fact.answer!r}; answer logit float {dla_before.logits[0]:.2f}, "
      f"{dla_method} {dla_after.logits[0]:.2f} (|Σ components - logit| = {dla_after.error:.1e})")
ranked = [(f"L{l}H{h}", float(heads_change[l, h])) for l in range(L) for h in range(heads_change.shape[1])]
ranked += [(f"MLP{l}", float(mlps_change[l])) for l in range(L)]
display(pd.DataFrame(sorted(ranked, key=lambda r: -abs(r[1]))[:10], columns=["component", "Δ DLA (logit)"]))
fig = go.Figure()
fig.add_bar(x=[f"L{l}" for l in range(L)], y=mlps_change, name="MLP")
fig.add_bar(x=[f"L{l}" for l in range(L)], y=heads_change.sum(1), name="attention (all heads)")
fig.update_layout(title=f"{dla_method}: change of each layer's direct logit attribution to {fact.answer!r}",
                  yaxis_title="Δ logit", barmode="group", height=380)
figs["dla_change"] = fig
fig

# %% [markdown]
# ## 7. Interactive: method, bits, group, rotation
#
# Pick a setting; the explorer computes it on first view (GPTQ and DFRot calibrate on the WordNet glosses)
# and shows the per-layer error of the sink against the other tokens, the per-position KL and the packed
# bytes. Remember that 4 bits with group 32 (asymmetric) reproduces this model's weights exactly.

# %%
explorer = quantization_explorer(model, explain_text, calibration_texts=calibration, sym=False,
                                 calibration=(gptq_samples, gptq_seq_len))
explorer

# %% [markdown]
# ## 8. The real path: int8 through fbgemm
#
# `int8_dynamic` replaces every linear and the output projection by fbgemm's dynamic int8 kernel. Decoding
# feeds one token per call, so each token gets its own input range. In a prefill fbgemm would use one range
# for the whole prompt, and the sink's massive activation (its down_proj input in block 11 is ~2000× the
# others') would crush every other token's resolution; `act_ranges="token"` (default) runs the prompt one
# token per call instead. `rotation="rh"` rotates the residual stream first and `online_had=True` adds
# QuaRot's online Hadamard before down_proj, which spread the outlier channels that the 8-bit inputs
# cannot resolve; on a CPU with VNNI, `act_bits=8` also uses the full 8-bit input range (fbgemm keeps 7 bits
# by default). With all three the perplexity change on SmolLM2 falls from about +6% to under 1%
# (BENCHMARKS.md). Speed is measured in `benchmarks/bench_quant.py` against plain HF in the same run.

# %%
P = "The capital of France is Paris. The capital of Japan is"
ref = model.run(P).logits[0, -1]
rows = []
for knobs in int8_variants:
    m8 = ef.get_method("int8_dynamic", **knobs)
    with model.intervene(m8.intervention(model)):
        out = model.run(P).logits[0, -1]
        rows.append({"method": m8.label, "bytes MiB": model.parameter_bytes() / 2**20,
                     "next token": model.to_string([int(out.argmax())]),
                     "KL (last position)": float((torch.softmax(ref, -1) * (torch.log_softmax(ref, -1)
                                                                           - torch.log_softmax(out, -1))).sum())})
print(f"float: {model.parameter_bytes() / 2**20:.1f} MiB, next token {model.to_string([int(ref.argmax())])!r}")
pd.DataFrame(rows)

# %%
if export:
    wb.export_figures(figs, out_dir)
    print(f"wrote {len(figs)} figures to {out_dir}")
