"""Compare next-token predictions with and without an intervention.

``compare(model, prompts, iv)`` runs the prompts twice (``logits="last"``), clean and with ``iv``,
and returns an ``AblationComparison`` holding, per prompt: the top-k tokens and probabilities of
both runs, KL(clean || intervened) in nats, and the change in log-probability of the clean top-1.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench.result import Result
from workbench.errors import InputError
from workbench.intervention import Compose, Intervention


@dataclass
class AblationComparison(Result):
    """Before/after next-token statistics; B prompts, k = top_k.

    before_ids, before_probs: (B, k) clean top-k token ids and probabilities.
    after_ids, after_probs: (B, k) top-k of the intervened run.
    after_probs_of_before: (B, k) intervened probabilities of the clean top-k tokens.
    kl: (B,) KL(clean || intervened) in nats, over the whole vocabulary.
    top1_logprob_change: (B,) log p_after(clean top-1) - log p_before(clean top-1).
    """

    prompts: list[str]
    intervention: str
    before_ids: torch.Tensor
    before_probs: torch.Tensor
    after_ids: torch.Tensor
    after_probs: torch.Tensor
    after_probs_of_before: torch.Tensor
    kl: torch.Tensor
    top1_logprob_change: torch.Tensor
    before_tokens: list[list[str]]
    after_tokens: list[list[str]]

    @property
    def top_k(self) -> int:
        return self.before_ids.shape[1]

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: KL, clean top-1 and its log-prob change, top-k before and after."""
        rows = []
        for i, p in enumerate(self.prompts):
            rows.append({
                "prompt": p, "kl": float(self.kl[i]),
                "clean_top1": self.before_tokens[i][0], "top1_logprob_change": float(self.top1_logprob_change[i]),
                "after_top1": self.after_tokens[i][0], "top1_changed": bool(self.before_ids[i, 0] != self.after_ids[i, 0]),
                "top_before": list(zip(self.before_tokens[i], [round(float(x), 4) for x in self.before_probs[i]])),
                "top_after": list(zip(self.after_tokens[i], [round(float(x), 4) for x in self.after_probs[i]])),
            })
        return pd.DataFrame(rows)

    def figure(self, prompt: int = 0):
        """Grouped bars: probabilities of the clean top-k tokens before vs after, for one prompt."""
        import plotly.graph_objects as go

        labels = [repr(t) for t in self.before_tokens[prompt]]
        fig = go.Figure([
            go.Bar(name="before", x=labels, y=self.before_probs[prompt].tolist()),
            go.Bar(name="after", x=labels, y=self.after_probs_of_before[prompt].tolist()),
        ])
        fig.update_layout(
            barmode="group", yaxis_title="probability", xaxis_title=f"clean top-{self.top_k} next tokens",
            title=f"{self.intervention}: next-token probabilities for {self.prompts[prompt][:60]!r} "
                  f"(KL {float(self.kl[prompt]):.3g} nats)",
        )
        return fig

    def __repr__(self) -> str:
        lines = [f"AblationComparison({self.intervention}, {len(self.prompts)} prompt(s), top_k={self.top_k})"]
        for i, p in enumerate(self.prompts[:5]):
            lines.append(f"  {p[:40]!r}: KL={float(self.kl[i]):.4g}, {self.before_tokens[i][0]!r} -> "
                         f"{self.after_tokens[i][0]!r}, Δlogp(clean top-1)={float(self.top1_logprob_change[i]):+.4g}")
        if len(self.prompts) > 5:
            lines.append("  ...")
        return "\n".join(lines)


def compare(model, prompts, intervention: Intervention, top_k: int = 5) -> AblationComparison:
    """Run ``prompts`` clean and with ``intervention``; compare the next-token distributions."""
    if not isinstance(intervention, Intervention):
        raise InputError(f"compare() needs an Intervention, got {type(intervention).__name__}.")
    if isinstance(intervention, Compose) and not intervention.parts:
        raise InputError("compare() got an empty Compose: there is nothing to ablate.")
    intervention.validate(model)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= model.info.d_vocab:
        raise InputError(f"top_k must be an integer in 1..{model.info.d_vocab}, got {top_k!r}.")
    before = model.run(prompts, logits="last")
    after = model.run(prompts, logits="last", interventions=[intervention])
    lp_b = torch.log_softmax(before.logits.detach().double(), -1)  # (B, V)
    lp_a = torch.log_softmax(after.logits.detach().double(), -1)
    kl = (lp_b.exp() * (lp_b - lp_a)).sum(-1).clamp_min(0).float()  # (B,)
    pb, ib = lp_b.exp().topk(top_k, -1)  # (B, k)
    pa, ia = lp_a.exp().topk(top_k, -1)
    top1 = ib[:, :1]
    change = (lp_a.gather(1, top1) - lp_b.gather(1, top1))[:, 0].float()
    if isinstance(prompts, str):
        texts = [prompts]
    elif isinstance(prompts, torch.Tensor):
        texts = ["".join(s) for s in before.str_tokens]
    else:
        texts = list(prompts)
    return AblationComparison(
        prompts=texts, intervention=intervention.describe(),
        before_ids=ib, before_probs=pb.float(), after_ids=ia, after_probs=pa.float(),
        after_probs_of_before=lp_a.exp().gather(1, ib).float(), kl=kl, top1_logprob_change=change,
        before_tokens=[model.str_tokens(r) for r in ib.tolist()],
        after_tokens=[model.str_tokens(r) for r in ia.tolist()],
    )
