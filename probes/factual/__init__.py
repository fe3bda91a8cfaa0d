"""Factual recall: bundled prompts, exact DLA, mechanisms, causal checks, lenses and probes (docs/factual.md)."""
from .data import (FactPrompt, FactSet, accuracy_table, answer_token, candidate_tokens, evaluate_facts, load_facts,
                   make_fact, token_positions)
from .dla import DLAResult, direct_logit_attribution, direct_logit_attribution_many, head_outputs
from .attribution_patching import (AttributionComparison, AttributionPatchingResult, attribution_patching,
                                   compare_attribution)
from .explorer import fact_explorer
from .ffn_updates import FFNLayerSummary, FFNSubUpdates, ffn_layer_summary, ffn_sub_updates
from .lenses import (LensComparison, LensTrajectory, LinearLens, compare_lenses, lens_corpus, fit_linear_lens,
                     lens_trajectory, logits_from_resid)
from .constraints import (Constraint, ConstraintPrompt, country_prompts, fact_constraint_prompts, verify_country,
                          verify_word, word_prompts)
from .lre import LREResult, RelationSample, country_pairs, country_relation, fit_lre
from .lre_causality import low_rank_pinv
from .lre_relations import FEW_SHOT_TEMPLATES, few_shot_samples, relation_pairs
from .lre_study import LREStudy, lre_study
from .mechanisms import (HeadClassification, HeadScale, MotifTable, SuppressionResult, additive_motif,
                         classify_heads, suppression_effect, suppressive_heads)
from .patching import (ActivationPatch, HeadPatchingResult, PatchingPair, ResidualPatchingResult, corrupt_subject,
                       patch_heads, patch_residual, patching_pair)
from .sat_constraints import run_constraints, sat_probe_constraints
from .sat_probe import SATProbeResult, fit_sat_probe, sat_probe

__all__ = [
    "FactPrompt", "FactSet", "load_facts", "make_fact", "token_positions", "answer_token", "candidate_tokens",
    "evaluate_facts", "accuracy_table", "DLAResult", "direct_logit_attribution", "direct_logit_attribution_many",
    "head_outputs", "fact_explorer", "HeadClassification", "classify_heads", "MotifTable", "additive_motif",
    "HeadScale", "suppressive_heads", "suppression_effect", "SuppressionResult",
    "ActivationPatch", "PatchingPair", "patching_pair", "corrupt_subject", "patch_residual", "patch_heads",
    "ResidualPatchingResult", "HeadPatchingResult", "attribution_patching", "compare_attribution",
    "AttributionPatchingResult", "AttributionComparison",
    "compare_lenses", "fit_linear_lens", "lens_trajectory", "lens_corpus", "logits_from_resid", "LinearLens",
    "LensComparison", "LensTrajectory", "ffn_sub_updates", "ffn_layer_summary", "FFNSubUpdates", "FFNLayerSummary",
    "fit_lre", "country_relation", "country_pairs", "LREResult", "RelationSample", "lre_study", "LREStudy",
    "few_shot_samples", "relation_pairs", "FEW_SHOT_TEMPLATES", "low_rank_pinv",
    "sat_probe", "fit_sat_probe", "SATProbeResult", "sat_probe_constraints", "run_constraints",
    "Constraint", "ConstraintPrompt", "word_prompts", "country_prompts", "fact_constraint_prompts", "verify_word",
    "verify_country",
]
