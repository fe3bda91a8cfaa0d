"""The concept frame the lab scores texts against (``probes.frames``), optional when WordNet is missing."""
from __future__ import annotations

import torch

from workbench.errors import InputError

_FRAMES: dict = {}


def concept_frame(model, name: str | None, key) -> tuple[object | None, str]:
    """(Concept or None, note). The frame is built on the clean model (the token space of its unembedding) and
    cached per ``key``; WordNet missing leaves the panel out with a note; an unknown synset is an error."""
    if name is None:
        return None, "concept panel off (concept=None)"
    from probes.frames.wordnet import wordnet_available

    if not wordnet_available():
        return None, ("no concept panel: WordNet 3.0 is not installed (Debian package wordnet-base, installed by "
                      "`make system`); every other panel is unaffected")
    k = (key, name)
    if k not in _FRAMES:
        from probes.frames import concept

        try:
            _FRAMES[k] = concept(model, name)
        except InputError as e:
            raise InputError(f"Concept {name!r} for the lab's concept panel: {e}") from None
    return _FRAMES[k], f"concept {name}"


def scores(concept, final_resid: torch.Tensor) -> torch.Tensor:
    """(T,) concept scores along a text from its (T, d) final-normalised hidden states (``probes.frames``)."""
    from probes.frames.correlation import frame_correlation
    from probes.frames.scores import windows

    h = final_resid.to(concept.frame.dtype)
    return frame_correlation(windows(h, concept.k), concept.frame[None]).detach().cpu().double()


__all__ = ["concept_frame", "scores"]
