"""Frame Representation Hypothesis (Valois et al., TACL 2025): words and concepts as frames.

- ``wordnet``: offline WordNet 3.0 through NLTK (Debian ``wordnet-base``; ``make system``).
- ``token_space``: unembedding rows, centred and whitened (Σ^{-1/2} on kept eigenvalues).
- ``word_frames``: a word's frame (d, k) of token vectors; rank statistics over WordNet lemmas.
- ``concepts``: synset concept frames by orthogonal Procrustes; combined concepts A − B; banks.
- ``correlation``: frame correlation; concept-vs-word correlations.
- ``scores``: concept scores along a text (windows of last hidden states).
- ``bias_probe``: gender shift of completions under guidance, with bootstrap CIs.
- ``explorer``: the interactive widget.
Guided decoding: ``guided_generate`` (``guidance.py``). Method and numbers: docs/frames.md.
"""
from .bias_probe import OCCUPATION_PROMPTS, BiasProbeResult, bias_probe, bootstrap_ci, gender_counts
from .concepts import Concept, ConceptBank, combine, concept, concept_bank, procrustes
from .correlation import ConceptWordCorrelation, concept_word_correlation, correlation_matrix, frame_correlation
from .explorer import frames_explorer
from .guidance import DIRECTIONS, GuidedDecoding, guided_generate
from .scores import ConceptScores, concept_scores, windows
from .token_space import TokenSpace, token_space
from .word_frames import VARIATIONS, RankStatistics, WordFrame, rank_statistics, word_frame, wordnet_lemmas
from .wordnet import WordNetMissingError, get_wordnet, prepare_wordnet, synset_table, wordnet_available

__all__ = [
    "TokenSpace", "token_space", "WordFrame", "word_frame", "RankStatistics", "rank_statistics", "wordnet_lemmas",
    "VARIATIONS", "Concept", "ConceptBank", "concept", "concept_bank", "combine", "procrustes", "frame_correlation",
    "correlation_matrix", "ConceptWordCorrelation", "concept_word_correlation", "ConceptScores", "concept_scores",
    "windows", "bias_probe", "BiasProbeResult", "OCCUPATION_PROMPTS", "gender_counts", "bootstrap_ci",
    "frames_explorer", "guided_generate", "GuidedDecoding", "DIRECTIONS", "get_wordnet", "prepare_wordnet", "wordnet_available", "synset_table", "WordNetMissingError",
]
