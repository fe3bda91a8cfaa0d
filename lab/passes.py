"""One pass of the lab's protocol over a suite: the baseline's (clean model) or a method's.

The protocol (``docs/efficiency_lab.md``): each sequence is split into a prefix and a tail. The prefix is
prefilled into a ``KVCache`` (the cache policy observing its attention), the policy compresses the cache
(step 0), then the tail is fed against that cache in one forward. Without a cache policy this is one
forward pass over the sequence; with one, every tail token reads the compressed cache, which is where a
KV method acts. Weight and activation methods act everywhere (their intervention is in force for the
whole pass).

- Perplexity windows: the tail is scored (the prefix's last logits predict the first tail token);
  log-probabilities at ``kl_positions`` evenly spread scored positions are kept by the baseline for the
  next-token KL; the internals windows also keep summaries of the tail (``WindowInternals``).
- Facts: prefix = preamble + prompt without its last token; tail = the last token, whose logits give the
  answer's rank and whose components give the DLA (``lab.dla``).
- Passkey (query-aware: the question is inside the compressed prefix): prefix = the prompt without its
  last token; tail = the last token then the answer, greedy for exact match (the policy applied after
  every step, as ``Model.generate`` does) and teacher-forced for the answer's log-probability.

Memory stays bounded: attention is reduced inside its hook to (H, T) per layer (mean over tail queries)
plus ``probe_rows`` whole rows; residuals are kept at the tail positions only (and all positions of the
internals windows for the massive-activation statistics, then reduced).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from workbench.errors import CaptureBudgetError, InputError
from workbench.capture import settings
from workbench.hook_names import hook_name
from workbench.kv_cache import KVCache, StepContext
from workbench.run import Run
from workbench.session import query_observer_hooks

from .dla import ComponentDLA, capture_hooks, component_dla
from .metrics import map_rows


@dataclass
class WindowInternals:
    """What one internals window's tail looked like (N tail tokens, T window positions, L layers, H heads).

    resid: (L, N, d) resid_post at the tail positions; received: (L, H, T) attention each original position
    received, averaged over the tail queries (evicted positions get 0); probe_rows: (P, L, H, T) whole rows of
    ``probe_queries``; massive: ``probes.sinks.MassiveActivationReport`` of the whole window; features: {layer:
    (N, F)} transcoder activations at the tail; final_resid: (T, d) final-normalised hidden states.
    """

    resid: torch.Tensor | None
    received: torch.Tensor
    probe_queries: list[int]
    probe_rows: torch.Tensor
    massive: object
    features: dict
    final_resid: torch.Tensor | None


@dataclass
class WindowRecord:
    nll: float
    n_scored: int
    top1: torch.Tensor                      # (n_scored,) argmax ids
    kl_index: list[int]
    kl_logprobs: torch.Tensor | None = None  # (n_kl, V): kept by the baseline
    kl: torch.Tensor | None = None           # (n_kl,) KL(baseline ‖ method): the method's side
    internals: WindowInternals | None = None


@dataclass
class FactRecord:
    correct: bool
    answer_logprob: float
    top1: int
    dla: ComponentDLA


@dataclass
class PasskeyRecord:
    correct: bool
    answer_logprob: float
    generated: str


@dataclass
class PassRecord:
    """Everything one pass measured. ``kv_bytes``: physical bytes of the first window's cache after the policy
    (``kv_tokens`` entries seen); ``forward_passes``: forwards this pass ran."""

    windows: list[WindowRecord] = field(default_factory=list)
    facts: list[FactRecord] = field(default_factory=list)
    passkeys: list[PasskeyRecord] = field(default_factory=list)
    kv_bytes: int = 0
    kv_tokens: int = 0
    forward_passes: int = 0
    seconds: float = 0.0

    @property
    def perplexity(self) -> float:
        n = sum(w.n_scored for w in self.windows)
        return math.exp(sum(w.nll for w in self.windows) / max(n, 1))


def _policy(factory):
    return None if factory is None else factory()


def _observer(policy):
    return None if policy is None else policy.observe_attention


def _query_hooks(model, policy) -> list:
    """Hooks feeding a policy's optional ``observe_queries`` (queries after RoPE; HashEvict hashes them)."""
    return query_observer_hooks(model, None if policy is None else getattr(policy, "observe_queries", None))


def _nll_top1(logits: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> tuple[float, torch.Tensor]:
    """(n, V) logits, (n,) targets -> (summed NLL, (n,) argmax), in chunks so no (n, V) float64 copy is made."""
    nll, top = 0.0, []
    for a in range(0, logits.shape[0], chunk):
        lg = logits[a:a + chunk].float()
        nll += float(torch.nn.functional.cross_entropy(lg, targets[a:a + chunk], reduction="sum"))
        top.append(lg.argmax(-1))
    return nll, torch.cat(top).cpu()


def internals_bytes(model, window: int, n_tail: int, probe_rows: int, n_features: int) -> int:
    """Bytes one internals window holds (baseline and method side): full-window residuals for the massive
    statistics while they are reduced, tail residuals, attention summaries, features."""
    i = model.info
    L, d, H = i.n_layers, i.d_model, i.n_heads
    return 4 * ((L + 1) * window * d + L * n_tail * d + L * H * window * (1 + probe_rows) + n_tail * n_features
                + window * d)


def window_pass(model, ids: torch.Tensor, prefix: int, factory, kl_index: list[int], keep_logprobs: bool,
                internals: dict | None, on_compressed=None):
    """Run one window through the protocol. internals: None, or {"probe_rows": int, "tc": {layer: transcoder}}
    to read the tail's internals; on_compressed(cache): called with the prefix's cache right after the policy
    (to measure its bytes). Returns (record, (n_kl, V) log-probs at ``kl_index``)."""
    dev = model.device
    ids = ids.to(dev)
    T = ids.shape[0]
    n_tail = T - prefix
    policy = _policy(factory)
    cache = KVCache.empty(model)
    pre_store: dict = {}
    hooks = []
    if internals is not None:
        hooks = _resid_hooks(model, pre_store)
    with model.session(hooks=hooks + _query_hooks(model, policy), observe_attention=_observer(policy)) as s:
        first = s.forward_cached(cache, ids[None, :prefix])[0, -1]
    if policy is not None:
        policy.apply(cache, StepContext(0, prefix, ids[None, :prefix]))
    if on_compressed is not None:
        on_compressed(cache)
    tail_store: dict = {}
    hooks = []
    probe_q: list[int] = []
    if internals is not None:
        hooks = _resid_hooks(model, tail_store)
        n_p = max(1, min(internals["probe_rows"], n_tail))
        probe_q = sorted({round(j * (n_tail - 1) / max(n_p - 1, 1)) for j in range(n_p)}) if n_p > 1 else [n_tail - 1]
        hooks += _attention_hooks(model, cache, tail_store, T, probe_q)
        hooks += [(hook_name("mlp_in", l), _keep(tail_store, ("mlp_in", l))) for l in internals["tc"]]
    with model.session(hooks=hooks) as s:
        tail_logits = s.forward_cached(cache, ids[None, prefix:])[0]
    scored = torch.cat([first[None], tail_logits[:-1]])  # (n_tail, V) predicting ids[prefix:]
    nll, top1 = _nll_top1(scored, ids[prefix:])
    logprobs = torch.log_softmax(scored[kl_index].float(), -1).cpu() if kl_index else None
    rec = WindowRecord(nll, n_tail, top1, list(kl_index), logprobs if keep_logprobs else None)
    if internals is not None:
        rec.internals = _window_internals(model, ids, pre_store, tail_store, probe_q, internals)
    return rec, logprobs


def _keep(store: dict, key):
    def fn(x, _name):
        store[key] = x[0].detach()
        return None
    return fn


def _resid_hooks(model, store: dict) -> list:
    L = model.info.n_layers
    out = [(hook_name("resid_pre", 0), _keep(store, "resid_pre0")), (hook_name("final_resid"), _keep(store, "final"))]
    out += [(hook_name("resid_post", l), _keep(store, ("resid_post", l))) for l in range(L)]
    return out


def _attention_hooks(model, cache: KVCache, store: dict, size: int, probe_q: list[int]) -> list:
    """Per layer: the tail's attention rows mapped to original positions, reduced to the mean over queries
    (H, size) and the rows of ``probe_q`` (P, H, size), inside the hook (no pattern is kept)."""
    L = model.info.n_layers

    def make(l):
        def fn(x, _name):
            p = x[0].detach().float()  # (H, n_new, K)
            n_new, k = p.shape[1], p.shape[2]
            old = cache.positions[l][0] if l < len(cache.positions) else torch.empty(model.info.n_kv_heads, 0,
                                                                                     dtype=torch.long)
            new = torch.arange(cache.next_position, cache.next_position + n_new, device=old.device)
            pos = torch.cat([old, new[None].expand(old.shape[0], n_new)], dim=1).to(p.device)  # (G, K)
            if pos.shape[1] != k:
                raise InputError(f"Layer {l}: the attention covers {k} keys but the cache holds {pos.shape[1]}; "
                                 "cannot map it onto positions.")
            store[("received", l)] = map_rows(p.mean(1), pos, size).cpu()
            store[("rows", l)] = map_rows(p[:, probe_q].transpose(0, 1), pos, size).cpu()  # (P, H, size)
            return None
        return fn

    return [(hook_name("pattern", l), make(l)) for l in range(L)]


def _window_internals(model, ids, pre: dict, tail: dict, probe_q, opts) -> WindowInternals:
    from probes.sinks.massive_activations import massive_activations_from_run

    L = model.info.n_layers
    T = ids.shape[0]
    cat = lambda key: torch.cat([pre[key], tail[key]])[None]  # (1, T, d)  # noqa: E731
    captures = {hook_name("resid_pre", 0): cat("resid_pre0")}
    captures.update({hook_name("resid_post", l): cat(("resid_post", l)) for l in range(L)})
    toks = ids[None].cpu()
    run = Run(toks, [model.str_tokens(ids.tolist())], [T], None, captures)
    massive = massive_activations_from_run(model, run, list(range(L)), [""])
    del captures, run
    resid = torch.stack([tail[("resid_post", l)] for l in range(L)]).float().cpu()
    feats = {}
    for l, tc in opts["tc"].items():
        x = tail[("mlp_in", l)]
        with torch.no_grad():
            feats[l] = tc.encode(x.to(tc.W_enc.device, tc.W_enc.dtype)).detach().float().cpu()
    final = torch.cat([pre["final"], tail["final"]]).float().cpu()
    return WindowInternals(resid, torch.stack([tail[("received", l)] for l in range(L)]), list(probe_q),
                           torch.stack([tail[("rows", l)] for l in range(L)], 1), massive, feats, final)


def fact_pass(model, item, factory) -> FactRecord:
    """Prefill the fact's prefix (preamble + prompt minus its last token), compress, feed the last token."""
    policy = _policy(factory)
    cache = KVCache.empty(model)
    prefix = item.prefix.to(model.device)
    with model.session(observe_attention=_observer(policy), hooks=_query_hooks(model, policy)) as s:
        s.forward_cached(cache, prefix[None])
    if policy is not None:
        policy.apply(cache, StepContext(0, prefix.shape[0], prefix[None]))
    store: dict = {}
    with model.session(hooks=capture_hooks(model, store)) as s:
        logits = s.forward_cached(cache, torch.tensor([[item.last]], device=model.device))[0, -1]
    dla = component_dla(model, store, logits, item.targets)
    lp = torch.log_softmax(logits.float(), -1)
    top = int(logits.argmax())
    return FactRecord(top == item.targets[0], float(lp[item.targets[0]]), top, dla)


def passkey_pass(model, sample, factory) -> PasskeyRecord:
    """Query-aware passkey: the prompt minus its last token is compressed; the last token and the answer run
    against it (greedy for exact match, teacher-forced for the answer's mean log-probability)."""
    ids, _ = model.tokenize(sample.prompt)
    ids = ids[0]
    ans = list(sample.answer_token_ids)
    policy = _policy(factory)
    cache = KVCache.empty(model)
    with model.session(observe_attention=_observer(policy), hooks=_query_hooks(model, policy)) as s:
        s.forward_cached(cache, ids[None, :-1])
    if policy is not None:
        policy.apply(cache, StepContext(0, ids.shape[0] - 1, ids[None, :-1]))
    greedy = cache.copy()
    eos = model.tokenizer.eos_token_id
    tok, out = int(ids[-1]), []
    with model.session(observe_attention=_observer(policy), hooks=_query_hooks(model, policy)) as s:
        for step in range(len(ans)):
            logits = s.forward_cached(greedy, torch.tensor([[tok]], device=model.device))[0, -1]
            if policy is not None:
                policy.apply(greedy, StepContext(step + 1, 1))
            tok = int(logits.argmax())
            out.append(tok)
            if tok == eos:
                break
    del greedy
    feed = torch.tensor([[int(ids[-1])] + ans[:-1]], device=model.device)
    with model.session() as s:
        lg = s.forward_cached(cache, feed)[0]
    lp = torch.log_softmax(lg.float(), -1)
    logprob = float(lp[torch.arange(len(ans)), torch.tensor(ans, device=lp.device)].mean())
    text = model.to_string(out)
    return PasskeyRecord(text.strip().startswith(sample.answer.strip()), logprob, text)


def timed_run(model, ids: torch.Tensor, factory, n_decode: int) -> tuple[float, float]:
    """(prefill ms/token, decode ms/token): prefill ``ids`` (the policy applied), then greedy-decode ``n_decode``
    tokens (the policy after each)."""
    policy = _policy(factory)
    cache = KVCache.empty(model)
    ids = ids.to(model.device)
    with model.session(observe_attention=_observer(policy), hooks=_query_hooks(model, policy)) as s:
        t0 = time.perf_counter()
        logits = s.forward_cached(cache, ids[None])[0, -1]
        if policy is not None:
            policy.apply(cache, StepContext(0, ids.shape[0], ids[None]))
        t1 = time.perf_counter()
        tok = int(logits.argmax())
        for step in range(1, n_decode + 1):
            logits = s.forward_cached(cache, torch.tensor([[tok]], device=model.device))[0, -1]
            if policy is not None:
                policy.apply(cache, StepContext(step, 1))
            tok = int(logits.argmax())
        t2 = time.perf_counter()
    return 1000 * (t1 - t0) / ids.shape[0], 1000 * (t2 - t1) / n_decode


def check_memory(model, data, n_features: int) -> None:
    """Refuse, before anything runs, internals that would not fit the capture budget."""
    s = data.suite
    need = s.internals_windows * internals_bytes(model, s.ppl_tokens, s.ppl_tokens - s.prefix_tokens, s.probe_rows,
                                                 n_features)
    need += s.ppl_windows * s.kl_positions * model.info.d_vocab * 4
    if need > settings.capture_budget_bytes:
        raise CaptureBudgetError(
            f"Suite {s.name!r} would hold about {need / 2**20:.0f} MiB of baseline internals and log-probabilities, over "
            f"the capture budget of {settings.capture_budget_bytes / 2**20:.0f} MiB. Use fewer internals_windows, "
            "probe_rows or kl_positions, shorter windows, or raise workbench.settings.capture_budget_bytes.")


__all__ = ["PassRecord", "WindowRecord", "WindowInternals", "FactRecord", "PasskeyRecord", "window_pass", "fact_pass",
           "passkey_pass", "timed_run", "check_memory", "internals_bytes"]
