"""LRE causality (Hernandez et al., ICLR 2024, section 4.2): edit a subject through the LRE's inverse.

If the relation's decoding is linear, o ≈ β W s + b, then moving the model's output from the
object representation o of subject s to the representation o' of another subject s' (another
object) needs the subject-state change

    Δs = W_ρ⁺ (o' − o)

with W_ρ⁺ the pseudo-inverse of W restricted to its top ρ singular directions (a low-rank inverse:
the small singular directions of a Jacobian are mostly noise). As in the authors' code, o and o'
are the model's own final-layer residuals at the last token of the two prompts (not the LRE's
outputs), and the edit adds Δs to the subject's last-token ``resid_post[ℓ]`` in the prompt of s.
The edit succeeds when the model's next token becomes the first token of the target's object.

Controls on the same pairs: ``swap`` (replace s by s' outright: an upper bound that needs the target
subject's state, not the LRE) and ``random`` (a random direction with the norm of Δs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from interventions.activation_patch import ActivationPatch
from workbench.errors import InputError

from .lenses import token_id
from .lre import RelationSample, subject_token_positions


def low_rank_pinv(w: torch.Tensor, rank: int) -> torch.Tensor:
    """(d_in, d_out) pseudo-inverse of ``w`` (d_out, d_in) kept to its ``rank`` largest singular values."""
    if not isinstance(rank, int) or rank < 1:
        raise InputError(f"rank must be a positive integer, got {rank!r}.")
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    r = min(rank, int((s > s[0] * 1e-10).sum()))
    return ((vh[:r].T / s[:r]) @ u[:, :r].T).to(w.dtype)


@dataclass
class SubjectState:
    """One prompt's clean run: the subject's last-token position, ``resid`` = resid_post[ℓ] (T, d),
    ``z`` = final-layer residual at the last token (d,), the model's top-1 next token and the
    object's first-token id."""

    sample: RelationSample
    position: int
    resid: torch.Tensor
    z: torch.Tensor
    top1: int
    object_id: int | None

    @property
    def h(self) -> torch.Tensor:
        return self.resid[self.position]

    @property
    def known(self) -> bool:
        return self.object_id is not None and self.top1 == self.object_id


def subject_states(model, samples, layer: int) -> list[SubjectState]:
    """Clean runs of ``samples`` (RelationSample) with the states an LRE edit needs at ``layer``."""
    layer = model.check_layer(layer)
    return subject_states_at(model, samples, [layer])[layer]


def subject_states_at(model, samples, layers) -> dict[int, list[SubjectState]]:
    """{layer: states} for several subject layers, from one forward pass per prompt."""
    layers = sorted({model.check_layer(x) for x in layers})
    last = model.info.n_layers - 1
    out: dict[int, list[SubjectState]] = {x: [] for x in layers}
    with torch.no_grad():
        for smp in samples:
            pos = subject_token_positions(model, smp.prompt, smp.subject)[-1]
            run = model.run(smp.prompt, capture=["resid_post"], layers=sorted({*layers, last}), logits="last")
            z, top1 = run["resid_post", last][0, -1].float(), int(run.last_logits[0].argmax())
            obj = token_id(model, smp.answer) if smp.answer else None
            for x in layers:
                out[x].append(SubjectState(smp, pos, run["resid_post", x][0].float(), z, top1, obj))
    return out


def edited_top1(model, state: SubjectState, layer: int, new_h: torch.Tensor) -> int:
    """The model's next token on ``state``'s prompt with the subject's resid_post[ℓ] replaced by ``new_h``."""
    src = state.resid.clone()
    src[state.position] = new_h.to(src.dtype)
    with torch.no_grad():
        run = model.run(state.sample.prompt, logits="last",
                        interventions=[ActivationPatch("resid_post", layer, src, positions=[state.position])])
    return int(run.last_logits[0].argmax())


def causal_pairs(states: list[SubjectState]) -> list[tuple[int, int]]:
    """(source, target) index pairs: each state with the next one (cyclically) whose object differs."""
    pairs = []
    n = len(states)
    for i in range(n):
        for k in range(1, n):
            j = (i + k) % n
            if states[j].object_id != states[i].object_id:
                pairs.append((i, j))
                break
    return pairs


def edit_success(model, states: list[SubjectState], pairs, layer: int, pinv: torch.Tensor | None,
                 mode: str = "lre", seed: int = 0) -> list[bool]:
    """Per (source, target) pair: did the edit make the source prompt predict the target's object?

    mode: "lre" (Δs = pinv (z' − z)), "swap" (s ← s'), "random" (random direction, norm of the LRE Δs).
    """
    if mode not in ("lre", "swap", "random"):
        raise InputError(f"mode must be 'lre', 'swap' or 'random', got {mode!r}.")
    if mode != "swap" and pinv is None:
        raise InputError(f"mode {mode!r} needs the LRE's pseudo-inverse.")
    gen = torch.Generator().manual_seed(seed)
    ok = []
    for i, j in pairs:
        src, tgt = states[i], states[j]
        if mode == "swap":
            new_h = tgt.h
        else:
            delta = pinv.to(src.z.dtype) @ (tgt.z - src.z)
            if mode == "random":
                r = torch.randn(delta.shape, generator=gen, dtype=delta.dtype)
                delta = r * (delta.norm() / r.norm())
            new_h = src.h + delta
        ok.append(edited_top1(model, src, layer, new_h) == tgt.object_id)
    return ok
