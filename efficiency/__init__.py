"""Efficiency interventions built on ``workbench.Model`` (KV-cache policies, quantization, sparsity, pruning)."""
