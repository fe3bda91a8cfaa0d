"""Transcoders for the workbench: corpus, activation harvest, training, checkpoints, evaluation,
shipped SmolLM2 transcoders, features, circuits.

Convention: a transcoder at layer l maps ``mlp_in`` = ``blocks.{l}.ln2.hook_normalized`` (the
normalised MLP input) to ``mlp_out`` = ``blocks.{l}.hook_mlp_out``. Every transcoder is an SAELens
``Transcoder`` (``SkipTranscoder``, ``JumpReLUTranscoder``, or the ``TopKTranscoder`` registered
here), so it loads with ``Transcoder.load_from_disk``.
"""
from workbench.texts import load_corpus, token_windows  # re-exported: the corpus lives in workbench.texts

from .architectures import (
    TopKSkipTranscoder,
    TopKSkipTranscoderConfig,
    TopKTranscoder,
    TopKTranscoderConfig,
    build_transcoder,
    from_relu_mlp,
)
from .circuit_explorer import circuit_explorer
from .circuits import (AttributionGraph, ConnectionReport, Contributions, PromptCache, attribution_graph, build_graph,
                       capture_prompt, connection_strengths, feature_contributions, graph_figure, logit_contributions,
                       one_step, top_features)
from .checkpoint import load_transcoder, save_transcoder
from .config import TranscoderTrainingConfig
from .evaluate import EvalReport, ReplacementEval, as_sae, evaluate
from .feature_explorer import feature_explorer
from .features import DeEmbedding, FeatureContexts, LogitEffects, de_embeddings, feature_contexts, logit_effects
from .harvest import (
    HarvestStats,
    ShuffleBuffer,
    cached_batches,
    harvest_cache,
    hook_names,
    layer_pairs,
    measure_harvest,
    pair_batches,
)
from .pretrained import load_pretrained, load_pretrained_sae, shipped_layers
from .store import harvest_store, store_pairs
from .train import (
    TrainingDivergedError,
    TrainResult,
    TranscoderTrainer,
    fit_many,
    model_metadata,
    train_transcoder,
)

__all__ = [
    "TopKTranscoder", "TopKTranscoderConfig", "TopKSkipTranscoder", "TopKSkipTranscoderConfig", "build_transcoder",
    "from_relu_mlp", "load_transcoder", "save_transcoder", "TranscoderTrainingConfig", "load_corpus", "token_windows",
    "EvalReport", "ReplacementEval", "as_sae", "evaluate", "HarvestStats", "ShuffleBuffer", "cached_batches",
    "harvest_cache", "hook_names", "layer_pairs", "measure_harvest", "pair_batches", "load_pretrained",
    "load_pretrained_sae", "shipped_layers", "TrainingDivergedError", "TrainResult", "TranscoderTrainer", "fit_many",
    "model_metadata", "train_transcoder", "harvest_store", "store_pairs",
    "feature_contexts", "FeatureContexts", "de_embeddings", "DeEmbedding", "logit_effects", "LogitEffects",
    "feature_explorer", "circuit_explorer", "AttributionGraph", "ConnectionReport", "Contributions", "PromptCache",
    "attribution_graph", "build_graph", "capture_prompt", "connection_strengths", "feature_contributions",
    "graph_figure", "logit_contributions", "one_step", "top_features",
]
