"""KV-cache compression papers at one fixed budget: StreamingLLM, H2O, SnapKV, ZigZagKV, KIVI."""
from ..claim import NOT_AT_135M, REFUTED, AtLeast, AtMost, Claim, Derived, num
from ..sources import QUICK, command, rel_change

KV = "python benchmarks/bench_kv.py --sections latency quality"
PASSKEY_SETTING = ("SmolLM2, passkey retrieval (5-digit key at depths 0.1-0.9), a quarter of the prompt's cache "
                   "kept (ratio 0.75), compressed after prefill; accuracy relative to the full cache")


def _rel(a, b):
    return a / b if b else float("nan")


def _passkey_claim(policy: str, paper: str, claim: str, paper_setting: str, paper_number: str,
                   fail: str = REFUTED, note: str = "") -> Claim:
    return Claim(
        key=f"kv.{policy}.passkey", paper=paper, claim=claim, paper_setting=paper_setting, paper_number=paper_number,
        our_setting=PASSKEY_SETTING + " (1,024-token prompts in kv.json, 256-token in the quick run)",
        numbers=(num("score", ("kv", f"quality/passkey/scores/{policy}"), (QUICK, f"kv/passkey/scores/{policy}")),
                 num("full", ("kv", "quality/passkey/scores/full cache"), (QUICK, "kv/passkey/scores/full cache")),
                 Derived("kept", ("score", "full"), _rel)),
        rule=AtLeast("kept", 0.9, 0.5, fail=fail),
        ours="passkey {score:.0%} vs full {full:.0%} ({kept:.0%} kept)",
        command=f"{KV}  (or {command(QUICK)})", note=note)


CLAIMS = (
    Claim(
        key="kv.streaming_llm.perplexity", paper="Xiao et al. 2024 (StreamingLLM)",
        claim="Keeping a few initial (sink) tokens plus a recent window keeps perplexity close to the full cache.",
        paper_setting="Llama-2, MPT, Falcon, Pythia; PG19, streaming token by token, 4 sinks + 1-4k window",
        paper_number="stable perplexity up to 4M tokens",
        our_setting="SmolLM2, 3 windows of 2,048 corpus tokens, streaming (chunks of 16, policy after each), "
                    "4 sinks + recent window at a quarter of the cache; relative perplexity change",
        numbers=(num("full", ("kv", "quality/perplexity/bundled_corpus_2048_streaming/full")),
                 num("sl", ("kv", "quality/perplexity/bundled_corpus_2048_streaming/streaming_llm")),
                 Derived("rise", ("sl", "full"), rel_change)),
        rule=AtMost("rise", 0.10, 0.25, fail=REFUTED),
        ours="perplexity {full:.2f} → {sl:.2f} ({rise:+.1%})",
        command=KV,
    ),
    Claim(
        key="kv.streaming_llm.sinks_matter", paper="Xiao et al. 2024 (StreamingLLM)",
        claim="The sink tokens are what make it work: a window without them loses far more perplexity.",
        paper_setting="Llama-2-13B, PG19: window attention vs sinks + window at the same budget",
        paper_number="window-only perplexity explodes once the first tokens are evicted (e.g. 5158 vs 5.4)",
        our_setting="SmolLM2, 2 texts of 512 tokens, prefix compressed to a quarter of its entries; "
                    "perplexity with 0 sinks / 4 sinks at the same budget",
        numbers=(num("full", (QUICK, "kv/perplexity/full cache")),
                 num("window", (QUICK, "kv/perplexity/window_only")),
                 num("sinks", (QUICK, "kv/perplexity/streaming_llm")),
                 Derived("ratio", ("window", "sinks"), _rel)),
        rule=AtLeast("ratio", 1.5, 1.05, fail=REFUTED),
        ours="perplexity full {full:.2f}, sinks + window {sinks:.2f}, window only {window:.2f} ({ratio:.2f}×)",
        command=command(QUICK),
        note="a compressed prefix, not the paper's 4M-token stream.",
    ),
    Claim(
        key="kv.h2o.perplexity", paper="Zhang et al. 2023 (H2O)",
        claim="Keeping heavy hitters (most attended tokens) plus a recent window at about 20% of the cache keeps "
              "quality close to the full cache.",
        paper_setting="OPT, LLaMA, GPT-NeoX; lm-eval / HELM tasks; 20% budget",
        paper_number="near full-cache accuracy at 20% heavy hitters",
        our_setting="SmolLM2, 2 texts of 512 tokens, prefix compressed to a quarter; relative perplexity change",
        numbers=(num("full", (QUICK, "kv/perplexity/full cache")), num("h2o", (QUICK, "kv/perplexity/h2o")),
                 Derived("rise", ("h2o", "full"), rel_change)),
        rule=AtMost("rise", 0.10, 0.25, fail=NOT_AT_135M),
        ours="perplexity {full:.2f} → {h2o:.2f} ({rise:+.1%})",
        command=command(QUICK),
    ),
    _passkey_claim("h2o", "Zhang et al. 2023 (H2O)",
                   "Heavy hitters keep what later queries need (here: a passkey asked for after the context).",
                   "OPT/LLaMA, lm-eval tasks at 20% budget (no retrieval task)", "near full-cache accuracy",
                   note="the paper has no retrieval task; accumulated attention favours early tokens and drops the key."),
    _passkey_claim("snapkv", "Li et al. 2024 (SnapKV)",
                   "Selecting entries by the attention of the last prompt tokens (observation window) keeps "
                   "needle retrieval at a small cache.",
                   "LWM-Text-Chat-1M etc.; LongBench, needle-in-a-haystack; 1-4k entries kept",
                   "negligible needle-retrieval drop up to 380k tokens"),
    _passkey_claim("zigzagkv", "Zhong et al. 2024 (ZigZagKV)",
                   "Per-layer budgets from layer uncertainty keep quality at about 20% of the cache.",
                   "Mistral, LLaMA; needle-in-a-haystack, LongBench", "nearly lossless at ~20% of KV memory"),
    Claim(
        key="kv.streaming_llm.passkey", paper="Xiao et al. 2024 (StreamingLLM)",
        claim="StreamingLLM does not extend what the model can recall: a key outside the sinks and the recent "
              "window is lost.",
        paper_setting="the paper's own caveat (its FAQ): evicted tokens are forgotten",
        paper_number="retrieval outside the window fails",
        our_setting=PASSKEY_SETTING + " (1,024-token prompts in kv.json, 256-token in the quick run)",
        numbers=(num("score", ("kv", "quality/passkey/scores/streaming_llm"), (QUICK, "kv/passkey/scores/streaming_llm")),
                 num("full", ("kv", "quality/passkey/scores/full cache"), (QUICK, "kv/passkey/scores/full cache")),
                 Derived("kept", ("score", "full"), _rel)),
        rule=AtMost("kept", 0.5, 0.9, fail=REFUTED),
        ours="passkey {score:.0%} vs full {full:.0%} (only keys inside the window survive)",
        command=f"{KV}  (or {command(QUICK)})",
    ),
    Claim(
        key="kv.kivi.passkey", paper="Liu et al. 2024 (KIVI)",
        claim="2-bit KV (keys per channel, values per token, recent tokens in full precision) keeps accuracy.",
        paper_setting="Llama-2, Falcon, Mistral; LongBench, GSM8K, passkey at 12k; group 32, residual 32-128",
        paper_number="near full-precision accuracy at 2 bits; 2.6× less peak memory",
        our_setting="SmolLM2, the quick passkey prompts (256 tokens), KIVI 2-bit and 4-bit (group 32, residual 32)",
        numbers=(num("k2", (QUICK, "kv/passkey/scores/kivi2")), num("k4", (QUICK, "kv/passkey/scores/kivi4")),
                 num("full", (QUICK, "kv/passkey/scores/full cache")),
                 Derived("kept", ("k2", "full"), _rel)),
        rule=AtLeast("kept", 0.9, 0.5, fail=NOT_AT_135M),
        ours="passkey 2-bit {k2:.0%}, 4-bit {k4:.0%}, full {full:.0%}",
        command=command(QUICK),
    ),
    Claim(
        key="kv.kivi.bytes", paper="Liu et al. 2024 (KIVI)",
        claim="KIVI stores the cache in a fraction of the bytes.",
        paper_setting="Llama-2-7B, 2-bit, GPU", paper_number="2.6× less peak memory (whole model)",
        our_setting="SmolLM2, 4-bit KIVI cache after the first prefill length of the latency run (1,024 tokens by default), physical bytes vs the full fp32 cache",
        numbers=(num("frac", ("kv", "latency/[variant=kivi4]/bytes_vs_full")),
                 Derived("x", ("frac",), lambda f: 1 / f)),
        rule=AtLeast("x", 4.0, 2.0, fail=REFUTED),
        ours="{x:.1f}× fewer cache bytes (4-bit vs fp32)",
        command=KV,
        note="the cache alone, not peak memory; fp32 baseline (the paper's is fp16).",
    ),
)
