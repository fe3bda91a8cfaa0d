"""The result of one forward pass: tokens, logits and whatever was captured."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd
import torch

from .capture import AttentionSummary, CaptureEstimate
from .errors import HookError
from .hook_names import SPECS, suggest


@dataclass
class Run:
    """Tokens, logits and captures of one forward pass over a prompt or a right-padded batch.

    tokens: (B, T) token ids; str_tokens: per prompt, one string per real token.
    lengths: real (unpadded) length of each prompt; padding sits on the right.
    logits: (B, T, vocab) for logits="all", (B, vocab) at each prompt's last real token for
        logits="last", None for logits=None or a truncated run.
    captures: full hook name -> tensor with the selected positions only (see ``positions``).
    positions: (P,) the captured positions, or None when every position was kept.
    summaries: layer -> AttentionSummary when attention="summary".
    """

    tokens: torch.Tensor
    str_tokens: list[list[str]]
    lengths: list[int]
    logits: torch.Tensor | None
    captures: dict[str, torch.Tensor] = field(default_factory=dict)
    positions: torch.Tensor | None = None
    summaries: dict[int, AttentionSummary] = field(default_factory=dict)
    estimate: CaptureEstimate | None = None
    interventions: str = ""

    def __getitem__(self, key) -> torch.Tensor:
        """``run["blocks.3.hook_resid_post"]``, ``run["resid_post", 3]`` or ``run["final_resid"]``."""
        if isinstance(key, tuple):
            name, layer = key
            spec = SPECS.get(name)
            if spec is None:
                raise HookError(f"Unknown short name {name!r}.{suggest(name, SPECS)}")
            full = spec.full_name(layer) + (":head_out" if spec.derived_from else "")
        elif key in SPECS and not SPECS[key].per_layer:
            full = SPECS[key].template
        elif key in SPECS:
            raise HookError(f"{key!r} is per layer: index it as run[{key!r}, layer] or use run.stack({key!r}).")
        else:
            full = key
        if full not in self.captures:
            raise HookError(f"{full!r} was not captured in this run.{suggest(full, self.captures)} "
                            f"Captured: {', '.join(list(self.captures)[:6])}{' ...' if len(self.captures) > 6 else ''}")
        return self.captures[full]

    def layers_of(self, name: str) -> list[int]:
        spec = SPECS[name]
        pre, post = spec.template.split("{l}")
        post += ":head_out" if spec.derived_from else ""
        out = []
        for k in self.captures:
            if k.startswith(pre) and k.endswith(post) and k[len(pre): len(k) - len(post)].isdigit():
                out.append(int(k[len(pre): len(k) - len(post)]))
        return sorted(out)

    def stack(self, name: str) -> torch.Tensor:
        """Stack a per-layer capture over its captured layers: (n_layers_captured, ...)."""
        layers = self.layers_of(name)
        if not layers:
            raise HookError(f"No layer of {name!r} was captured in this run.")
        return torch.stack([self[name, l] for l in layers])

    @property
    def last_logits(self) -> torch.Tensor:
        """(B, vocab) logits at each prompt's last real token."""
        if self.logits is None:
            raise ValueError("This run kept no logits (logits=None or stop_at_layer).")
        if self.logits.ndim == 2:
            return self.logits
        idx = torch.tensor(self.lengths, device=self.logits.device) - 1
        return self.logits[torch.arange(len(self.lengths)), idx]

    def to_frame(self) -> pd.DataFrame:
        """One row per capture: name, shape, dtype, MiB."""
        rows = [{"name": k, "shape": tuple(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                 "MiB": v.numel() * v.element_size() / 2**20} for k, v in self.captures.items()]
        rows += [{"name": f"attention summary L{l}", "shape": tuple(s.received.shape), "dtype": "float32",
                  "MiB": s.nbytes / 2**20} for l, s in self.summaries.items()]
        return pd.DataFrame(rows, columns=["name", "shape", "dtype", "MiB"])

    def __repr__(self) -> str:
        b, t = self.tokens.shape
        return (f"Run(batch={b}, seq={t}, captures={len(self.captures)}, summaries={len(self.summaries)}"
                f"{', interventions=' + self.interventions if self.interventions else ''})")

    def _repr_html_(self) -> str:
        toks = " ".join(f"<code>{html.escape(t)}</code>" for t in self.str_tokens[0][:64])
        return (f"<b>{html.escape(repr(self))}</b><br>prompt 0: {toks}"
                f"{' …' if len(self.str_tokens[0]) > 64 else ''}" + self.to_frame().to_html(index=False))
