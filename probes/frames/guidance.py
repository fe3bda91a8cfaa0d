"""Top-k concept-guided decoding (Frame Representation Hypothesis; see docs/frames.md).

At every step the model's top-k next tokens are the candidates. All k run in **one** batched
forward against the KV cache of the text so far (the cache is broadcast to batch k; each row
appends its own candidate). Each candidate is scored by the concept correlation of the windows of
last hidden states (``final_resid``, after the final norm) that contain it:

    score(c) = Σ_{s = n-K+1}^{n} ⟨[h_s, …, h_{n-1}, h_c, 0, …], C⟩        (K = frame width)

which is the cumulative windowed score of the continuation (windows that do not contain the new
position are the same for every candidate, so they do not change the choice). The best candidate
is kept, together with its cache row and its next-token logits, whose top-k are the next
candidates. ``direction="away"`` uses −C. With k = 1 the only candidate is the argmax: the result
is greedy decoding token for token (tested).

``guided_generate(model, prompt, concept, k)`` returns a ``GuidedDecoding`` with the guided and
the greedy continuation side by side. No hook outlives the call (the hidden-state hook lives in a
workbench hook session); decoding uses ``workbench.generation.cached_forward``.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from workbench.result import Result
from workbench.errors import InputError
from workbench.hook_names import hook_name
from workbench.kv_cache import KVCache

from .correlation import frame_correlation
from .scores import resolve_concepts, windows

DIRECTIONS = ("toward", "away")
_FINAL = hook_name("final_resid")


def _window_scores(tail: torch.Tensor, cand: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """tail (m, d) last m ≤ K-1 chosen hidden states, cand (k, d) candidate states, frame (d, K)
    -> (k,) sum over the windows containing the candidate of ⟨window, frame⟩ (frame correlation)."""
    kk = frame.shape[1]
    k, d = cand.shape
    seq = torch.cat([tail[None].expand(k, -1, -1), cand[:, None]], dim=1)  # (k, m+1, d)
    m1 = seq.shape[1]
    r_c = float((frame != 0).any(0).sum())
    total = torch.zeros(k, dtype=torch.float64)
    for j in range(m1):  # window starting at tail position j holds seq[j:], then zero columns
        cols = seq[:, j:]  # (k, m1-j, d)
        tr = torch.einsum("bcd,dc->b", cols.double(), frame[:, : m1 - j].double())
        total += tr / (min(m1 - j, kk) * r_c) ** 0.5
    return total


@dataclass
class _Decode:
    tokens: list[int]
    hidden: list[torch.Tensor]
    candidates: list[list[int]]
    chosen_rank: list[int]
    step_scores: list[float]
    seconds: float


def _decode(model, ids: torch.Tensor, frame: torch.Tensor, k: int, max_new_tokens: int, stop_at_eos: bool,
            interventions=()) -> _Decode:
    eos = model.tokenizer.eos_token_id
    kk = frame.shape[1]
    captured: dict[str, torch.Tensor] = {}

    def grab(x, _name):
        captured["h"] = x.detach()[:, -1].float()  # (B, d) last position
        return None

    tokens, hidden, cands_all, ranks, step_scores = [], [], [], [], []
    t0 = time.perf_counter()
    cache = KVCache.empty(model)
    with model.session(interventions, hooks=[(_FINAL, grab)]) as session:
        logits = session.forward_cached(cache, ids)[0, -1]
        for _ in range(max_new_tokens):
            top = torch.topk(logits.float(), k).indices
            top[0] = logits.argmax()  # exact greedy first candidate, whatever topk does with ties
            cands = top
            if k > 1:
                cache.expand(k)
            out = session.forward_cached(cache, cands[:, None].to(ids.device))  # (k, 1, V)
            h = captured["h"].cpu()  # (k, d)
            tail = torch.stack(hidden[-(kk - 1):]) if hidden and kk > 1 else h.new_zeros((0, h.shape[1]))
            sc = _window_scores(tail, h, frame)
            i = int(sc.argmax()) if k > 1 else 0  # k = 1: the argmax token, i.e. greedy
            if k > 1:
                cache.select(i)
            tok = int(cands[i])
            tokens.append(tok)
            hidden.append(h[i])
            cands_all.append([int(c) for c in cands])
            ranks.append(i)
            step_scores.append(float(sc[i]))
            logits = out[i, -1]
            if stop_at_eos and tok == eos:
                break
    return _Decode(tokens, hidden, cands_all, ranks, step_scores, time.perf_counter() - t0)


def _total_score(hidden: list[torch.Tensor], frame: torch.Tensor) -> float:
    """Σ over all windows of the continuation of ⟨window, frame⟩ (the concept_scores total)."""
    if not hidden:
        return 0.0
    w = windows(torch.stack(hidden), frame.shape[1])
    return float(frame_correlation(w, frame[None].to(w.dtype)).sum())


@dataclass
class GuidedDecoding(Result):
    """Guided and greedy continuations of one prompt, side by side.

    guided_tokens / greedy_tokens: new token ids; candidates: (steps, k) candidate ids per guided
    step; chosen_rank: (steps,) which candidate (0 = the greedy choice) was kept;
    guided_score / greedy_score: total windowed concept score of each continuation (sign included,
    so 'away' guidance makes it larger); step_scores: the guided step scores.
    """

    model_name: str
    prompt: str
    concept: str
    direction: str
    k: int
    guided_tokens: list[int]
    greedy_tokens: list[int]
    guided_text: str
    greedy_text: str
    candidates: list[list[int]]
    chosen_rank: list[int]
    guided_score: float
    greedy_score: float
    seconds: float
    step_scores: list[float] = field(default_factory=list)
    str_candidates: list[list[str]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return len(self.guided_tokens) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def n_deviations(self) -> int:
        """Steps where guidance kept a candidate other than the model's top-1."""
        return int(sum(r != 0 for r in self.chosen_rank))

    def to_frame(self) -> pd.DataFrame:
        rows = []
        n = max(len(self.guided_tokens), len(self.greedy_tokens))
        for s in range(n):
            rows.append({"step": s,
                         "guided": self.str_candidates[s][self.chosen_rank[s]] if s < len(self.guided_tokens) else "",
                         "greedy": "" if s >= len(self.greedy_tokens) else self._tok(self.greedy_tokens[s]),
                         "candidates": " | ".join(self.str_candidates[s]) if s < len(self.str_candidates) else "",
                         "chosen_rank": self.chosen_rank[s] if s < len(self.chosen_rank) else None})
        return pd.DataFrame(rows)

    def _tok(self, t: int) -> str:
        for cands, ids in zip(self.str_candidates, self.candidates):
            if t in ids:
                return cands[ids.index(t)]
        return str(t)

    def figure(self):
        """Which candidate guidance kept at each step (0 = greedy's token), with the kept token."""
        import plotly.graph_objects as go

        x = list(range(len(self.chosen_rank)))
        labels = [self.str_candidates[s][r] for s, r in enumerate(self.chosen_rank)]
        fig = go.Figure(go.Bar(x=x, y=[r + 1 for r in self.chosen_rank], text=[repr(t)[1:-1] for t in labels],
                               textposition="outside", marker_color=["#999" if r == 0 else "#d62728"
                                                                     for r in self.chosen_rank]))
        fig.update_layout(title=(f"Guided decoding {self.direction} {self.concept} (k = {self.k}): "
                                 f"{self.n_deviations} of {len(x)} steps left the greedy token; score "
                                 f"{self.guided_score:.2f} vs greedy {self.greedy_score:.2f}"),
                          xaxis_title="step", yaxis_title="rank of kept candidate (1 = greedy)",
                          template="plotly_white", width=max(600, 40 * len(x) + 200), height=380)
        fig.update_yaxes(range=[0, self.k + 0.8], dtick=1)
        return fig

    def __repr__(self) -> str:
        return (f"GuidedDecoding({self.direction} {self.concept}, k={self.k}, {len(self.guided_tokens)} tokens, "
                f"{self.tokens_per_s:.1f} tok/s)\n  prompt : {self.prompt!r}\n  greedy : {self.greedy_text!r}\n"
                f"  guided : {self.guided_text!r}")

    def _repr_html_(self) -> str:
        e = html.escape
        return (f"<div><b>Guided decoding</b> {e(self.direction)} <code>{e(self.concept)}</code>, k = {self.k} "
                f"({self.n_deviations} of {len(self.chosen_rank)} steps changed; concept score "
                f"{self.guided_score:.2f} vs greedy {self.greedy_score:.2f})<br><i>{e(self.prompt)}</i>"
                "<table><tr><th>greedy</th><th>guided</th></tr>"
                f"<tr><td style='vertical-align:top;white-space:pre-wrap'>{e(self.greedy_text)}</td>"
                f"<td style='vertical-align:top;white-space:pre-wrap;color:#a22'>{e(self.guided_text)}</td></tr>"
                "</table></div>")


def chat_prompt(model, text: str) -> str:
    """``text`` as one user turn in the model's chat template, ready for the assistant's answer."""
    tpl = getattr(model.tokenizer, "chat_template", None)
    if not tpl:
        raise InputError(f"{model.info.name}'s tokenizer has no chat template; pass chat=False.")
    return model.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True)


def guided_generate(model, prompt: str, concept, k: int = 2, max_new_tokens: int = 16, direction: str = "toward",
                    chat: bool = False, stop_at_eos: bool = True, greedy: bool = True, frame_k: int = 3,
                    interventions=()) -> GuidedDecoding:
    """Top-k concept-guided decoding of one prompt, with the greedy continuation beside it.

    concept: a ``probes.frames.Concept`` or a synset name ('woman.n.01', 'woman.n.01 - man.n.01'),
    built with width ``frame_k``. direction: 'toward' or 'away'. chat: wrap the prompt in the chat
    template. greedy=False skips the greedy baseline (its fields are then empty).
    """

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k (candidates per step) must be a positive integer, got {k!r}.")
    if k > model.info.d_vocab:
        raise InputError(f"k={k} exceeds the vocabulary ({model.info.d_vocab}).")
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("The prompt is empty: guided decoding needs a prompt string.")
    c = resolve_concepts(model, concept, frame_k)[0]
    if c.frame.shape[0] != model.info.d_model:
        raise InputError(f"The concept frame has d={c.frame.shape[0]} but the model has d_model={model.info.d_model}.")
    text = chat_prompt(model, prompt) if chat else prompt
    ids, _ = model.tokenize(text)
    if ids.shape[1] + max_new_tokens + 1 > model.info.n_ctx:
        raise InputError(f"Prompt ({ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context "
                         f"of {model.info.n_ctx}.")
    frame = (c.frame if direction == "toward" else -c.frame).float().cpu()
    g = _decode(model, ids, frame, k, max_new_tokens, stop_at_eos, interventions)
    b = _decode(model, ids, frame, 1, max_new_tokens, stop_at_eos, interventions) if greedy else None
    str_c = [[model.tokenizer.decode([t]) for t in cs] for cs in g.candidates]
    return GuidedDecoding(
        model.info.name, prompt, c.name, direction, k, g.tokens, b.tokens if b else [], model.to_string(g.tokens),
        model.to_string(b.tokens) if b else "", g.candidates, g.chosen_rank, _total_score(g.hidden, frame),
        _total_score(b.hidden, frame) if b else float("nan"), g.seconds, g.step_scores, str_c)


__all__ = ["guided_generate", "GuidedDecoding", "chat_prompt", "DIRECTIONS"]
