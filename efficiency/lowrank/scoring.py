"""Fact scoring for LASER's sweep: top-1 accuracy and answer log-probability of prompt/answer pairs.

The answer token of a pair is the first token of the answer string (which should carry its leading
space, e.g. " Paris"). Prompts run in batches (right-padded; the logits at each prompt's last real
token are read), under the interventions in force.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import InputError


@dataclass
class FactScore:
    correct: torch.Tensor      # (N,) bool
    logprob: torch.Tensor      # (N,) log-probability of the answer token

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())

    @property
    def mean_logprob(self) -> float:
        return float(self.logprob.mean())


class FactScorer:
    """Scores the model on fixed (prompt, answer) pairs; ``scorer(model) -> FactScore``."""

    def __init__(self, model, prompts, answers, batch_size: int = 32):
        prompts, answers = list(prompts), list(answers)
        if not prompts or len(prompts) != len(answers):
            raise InputError(f"FactScorer: give as many answers as prompts (non-empty), got {len(prompts)} and {len(answers)}.")
        if not all(isinstance(p, str) and p for p in prompts) or not all(isinstance(a, str) and a.strip() for a in answers):
            raise InputError("FactScorer: prompts and answers must be non-empty strings.")
        self.prompts = prompts
        self.answers = answers
        self.answer_ids = torch.tensor([model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answers])
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index) -> "FactScorer":
        out = object.__new__(FactScorer)
        index = list(index)
        out.prompts = [self.prompts[i] for i in index]
        out.answers = [self.answers[i] for i in index]
        out.answer_ids = self.answer_ids[index]
        out.batch_size = self.batch_size
        return out

    def __call__(self, model) -> FactScore:
        correct, lp = [], []
        for i in range(0, len(self.prompts), self.batch_size):
            logits = model.run(self.prompts[i: i + self.batch_size], logits="last").last_logits.double()
            ans = self.answer_ids[i: i + self.batch_size].to(logits.device)
            correct.append((logits.argmax(-1) == ans).cpu())
            lp.append(torch.log_softmax(logits, -1).gather(-1, ans[:, None])[:, 0].cpu())
        return FactScore(torch.cat(correct), torch.cat(lp))
