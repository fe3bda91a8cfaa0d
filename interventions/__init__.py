"""Interventions on ``workbench.Model``: ablation, patching, steering, splicing, guided decoding."""
