"""Transcoder feature circuits (docs/transcoders.md): one import point for connection strengths
(input-invariant), one-step attribution and greedy attribution graphs (input-dependent), and
their figure. The implementation lives in ``connections``, ``attribution_graph`` and
``circuit_figure``."""
from .attribution_graph import (AttributionGraph, Contributions, Node, PromptCache, attribution_graph, build_graph,
                                capture_prompt, feature_contributions, logit_contributions, one_step, top_features)
from .circuit_figure import graph_figure
from .connections import ConnectionReport, ModelWeights, connection_strengths, model_weights

__all__ = ["AttributionGraph", "Contributions", "Node", "PromptCache", "attribution_graph", "build_graph",
           "capture_prompt", "feature_contributions", "logit_contributions", "one_step", "top_features",
           "graph_figure", "ConnectionReport", "ModelWeights", "connection_strengths", "model_weights"]
