"""Valois et al., TACL 2025, "Frame Representation Hypothesis": words as frames of token vectors."""
from ..claim import NOT_AT_135M, REFUTED, AtLeast, AtMost, Claim, num

PAPER = "Valois et al. 2025 (Frame Representation Hypothesis)"

CLAIMS = (
    Claim(
        key="frames.full_rank", paper=PAPER,
        claim="Almost every multi-token word is a full-rank frame (its token vectors are linearly independent).",
        paper_setting="Llama 3.1, Gemma 2, Phi 3; Open Multilingual WordNet",
        paper_number="over 99% full rank",
        our_setting="SmolLM2 unembedding (whitened), all English WordNet lemmas of 2-8 tokens",
        numbers=(num("share", ("frames", "rank_statistics/full_rank_share")),
                 num("n", ("frames", "rank_statistics/lemmas"))),
        rule=AtLeast("share", 0.99, 0.97, fail=REFUTED),
        ours="{share:.2%} of {n:,} lemmas",
        command="python benchmarks/bench_frames.py --threads 1",
        note="our lemma set is wider (up to 8 tokens, where repeated tokens lose rank).",
    ),
    Claim(
        key="frames.guided_decoding", paper=PAPER,
        claim="Concept-guided decoding steers generations toward a concept.",
        paper_setting="Llama 3.1-8B, Gemma 2, Phi 3; top-k guided decoding with rank-3 concept frames",
        paper_number="qualitative (bias exposure and remediation examples)",
        our_setting="SmolLM2, guided (k = 2) vs greedy decoding over prompts; rate of target words in continuations, "
                    "one-sided permutation test",
        numbers=(num("guided", ("reproductions", "frames/guidance/rate_guided")),
                 num("greedy", ("reproductions", "frames/guidance/rate_greedy")),
                 num("p", ("reproductions", "frames/guidance/p_value"))),
        rule=AtMost("p", 0.05, 0.2, fail=NOT_AT_135M),
        ours="target-word rate {guided:.2f} guided vs {greedy:.2f} greedy, permutation p = {p:.3f}",
        command="python scripts/reproductions.py --measure frames",
    ),
)
