"""Analysis modules built on ``workbench.Model`` (attention sinks, factual recall, transcoders, frames, probes)."""
