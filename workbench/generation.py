"""Greedy and sampled generation through the wrapper, with a managed, policy-editable KV cache."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import torch

from .errors import InputError
from .hook_names import hook_name
from .fast_attention import attends_itself, plain_cache
from .kv_cache import CachePolicy, CacheStats, KVCache, StepContext, check_policy
from .session import attention_observer_hooks, query_observer_hooks


@dataclass
class Generation:
    """One prompt's continuation.

    prompt_tokens: (T0,) ids; new_tokens: (n,) generated ids; logits: (n, vocab) the logits each
    new token was chosen from; cache_stats: one CacheStats after prefill and after every step
    (empty when use_cache=False); cache: the final KVCache (None when use_cache=False).
    """

    prompt: str
    prompt_tokens: torch.Tensor
    new_tokens: torch.Tensor
    text: str
    logits: torch.Tensor
    cache_stats: list[CacheStats] = field(default_factory=list)
    cache: KVCache | None = None
    policy: str = "full cache"

    @property
    def tokens(self) -> torch.Tensor:
        return torch.cat([self.prompt_tokens, self.new_tokens])

    @property
    def full_text(self) -> str:
        return self.prompt + self.text

    def to_frame(self) -> pd.DataFrame:
        lp = torch.log_softmax(self.logits.float(), -1)
        rows = []
        for i, t in enumerate(self.new_tokens.tolist()):
            row = {"step": i, "token_id": t, "logprob": float(lp[i, t])}
            if i < len(self.cache_stats):
                st = self.cache_stats[i]  # the cache this token was predicted from
                row.update(cache_tokens=float(st.tokens.float().mean()), physical_bytes=st.physical_bytes,
                           logical_bytes=st.logical_bytes)
            rows.append(row)
        return pd.DataFrame(rows)

    def figure(self) -> go.Figure:
        """KV-cache bytes (physical and logical) over the generation steps."""
        fig = go.Figure()
        steps = list(range(len(self.cache_stats)))
        fig.add_scatter(x=steps, y=[s.physical_bytes / 2**20 for s in self.cache_stats], name="physical MiB")
        fig.add_scatter(x=steps, y=[s.logical_bytes / 2**20 for s in self.cache_stats], name="logical MiB",
                        line={"dash": "dot"})
        fig.update_layout(title=f"KV cache during generation ({self.policy})", xaxis_title="step (0 = after prefill)",
                          yaxis_title="MiB")
        return fig

    def __repr__(self) -> str:
        return f"Generation({self.policy}: {self.prompt!r} -> {self.text!r})"

    def _repr_html_(self) -> str:
        return f"<b>{html.escape(self.prompt)}</b><span style='color:#2a7'>{html.escape(self.text)}</span>"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _validate(model, max_new_tokens, temperature, top_k, top_p, use_cache, cache_policy):
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    # Type checks first: a comparison with None or a string would raise a bare TypeError.
    if not _is_number(temperature) or not temperature > 0:
        raise InputError(f"temperature must be a number > 0, got {temperature!r} (use do_sample=False for greedy).")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise InputError(f"top_k must be a positive integer or None, got {top_k!r}.")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise InputError(f"top_p must be a number in (0, 1] or None, got {top_p!r}.")
    if cache_policy is not None:
        if not use_cache:
            raise InputError("A cache_policy needs use_cache=True: without a cache there is nothing to compress.")
        check_policy(cache_policy)
        bind_policy(cache_policy, model)


def bind_policy(policy, model) -> None:
    """Give ``policy`` the model when it asks for it (its optional ``bind(model)``; see ``CachePolicy``)."""
    bind = getattr(policy, "bind", None)
    if callable(bind):
        bind(model)


def _choose(logits: torch.Tensor, do_sample: bool, temperature: float, top_k, top_p, gen) -> int:
    """logits (vocab,) -> next token id."""
    if not do_sample:
        return int(logits.argmax())
    z = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(z, min(top_k, z.numel())).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_z, order = torch.sort(z, descending=True)
        cum = torch.softmax(sorted_z, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_z, -1) >= top_p  # keep the smallest set reaching top_p
        z[order[drop]] = float("-inf")
    return int(torch.multinomial(torch.softmax(z, -1).cpu(), 1, generator=gen))


def cached_forward(model, cache: KVCache, inp: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
    """Run (1, n_new) tokens against ``cache`` at their true positions; returns logits (1, n_new, vocab)
    ((1, 1, vocab) for the last token only with ``last_only``: the unembedding then runs on one row).

    The mask spans the longest layer (layers may hold different counts after eviction); RoPE
    uses ``cache.next_position`` onwards, never the (possibly shrunken) cache length. Where that
    shared mask is not right for a layer (padding slots of a ragged per-head layer, or several new
    tokens fed into a layer shorter than the longest) the layer's scores are masked exactly
    (``KVCache.blocked_slots``): on the hooked path through a temporary hook on ``hook_attn_scores``,
    on the hook-free path inside the attention (``workbench.fast_attention``; layers that attend
    themselves, ragged and preallocated ones, mask their own slots).
    """
    n_new = inp.shape[1]
    layers = cache.hf_cache.layers
    longest = max((cache.seq_len(l) for l in range(cache.n_layers)), default=0)
    pos = torch.arange(cache.next_position, cache.next_position + n_new, device=inp.device)
    cpos = torch.arange(longest, longest + n_new, device=inp.device)
    kw = dict(past_key_values=cache.hf_cache, use_cache=True, position_ids=pos[None], cache_position=cpos)
    if last_only and model._keeps_logits:
        kw["logits_to_keep"] = 1
    plain = model._route()
    if plain is not None:
        own = model._plain_view.simple_layers  # layers where a cache layer may attend itself
        blocked = {l: b for l in range(cache.n_layers)
                   if not (l in own and l < len(layers) and attends_itself(layers[l]))
                   and (b := cache.blocked_slots(l, n_new, longest)) is not None}
        with plain_cache(cache.hf_cache, blocked, own):
            logits = model._forward(inp, plain, **kw)
    else:
        blocked = {l: b for l in range(cache.n_layers)
                   if (b := cache.blocked_slots(l, n_new, longest)) is not None}
        if blocked:
            with _score_masks(model, blocked):
                logits = model._forward(inp, None, **kw)
        else:
            logits = model._forward(inp, None, **kw)
    cache._record_new(n_new)
    if last_only and logits.shape[1] != 1:
        logits = logits[:, -1:]
    return logits


def _score_masks(model, blocked: dict):
    """A hook session masking, per layer, the (G, Tq, Tk) ``blocked`` slots in the pre-softmax scores
    (query head h reads KV head h // (H // G)), so they get exactly zero attention. Runs after any
    intervention on the scores (its hooks are registered later)."""
    from .hooks import HookSession

    session = HookSession(model._points, model._dormant)
    for l, b in blocked.items():
        name = hook_name("scores", l)
        if name not in model._points:
            raise InputError(f"This model exposes no {name!r}: it cannot attend over per-head (ragged) caches or "
                             f"feed several tokens into layers of different lengths.")

        def fn(x, _name, b=b):
            if x.shape[-2:] != b.shape[-2:]:
                raise InputError(f"cached_forward: attention scores {tuple(x.shape)} do not match the cache's "
                                 f"layout {tuple(b.shape)}; was the cache edited outside KVCache?")
            m = b.to(x.device).repeat_interleave(x.shape[1] // b.shape[0], dim=0)
            return x.masked_fill(m, torch.finfo(x.dtype).min)

        session.add(name, fn)
    return session


def _observe_attention(model, session, cache_policy) -> None:
    """Feed every layer's pattern (B, H, Tq, Tk) to ``cache_policy.observe_attention`` when it observes,
    and its queries after RoPE (B, H, Tq, d) to ``cache_policy.observe_queries`` when it has one."""
    if cache_policy is None:
        return
    for name, fn in (attention_observer_hooks(model, cache_policy.observe_attention)
                     + query_observer_hooks(model, getattr(cache_policy, "observe_queries", None))):
        session.add(name, fn)


CACHE_KINDS = ("dynamic", "preallocated", "static")


def new_cache(model, kind: str, capacity: int) -> KVCache:
    """An empty ``KVCache`` of ``kind``: "dynamic" (grows by concatenation) or "preallocated" (alias
    "static": buffers for ``capacity`` tokens allocated once, compacted in place by eviction)."""
    if kind not in CACHE_KINDS:
        raise InputError(f"cache must be one of {CACHE_KINDS}, got {kind!r}.")
    return KVCache.empty(model) if kind == "dynamic" else KVCache.preallocated(model, capacity)


def prefill(model, prompt, cache_policy: CachePolicy | None = None, interventions=(), return_logits: bool = False,
            capacity: int | None = None):
    """Run a prompt once and return its KVCache (after ``cache_policy`` if given).

    With ``return_logits=True``, returns ``(cache, logits)`` where logits (V,) are the next-token
    logits at the last prompt position (computed before the policy ran). ``capacity``: return a
    preallocated cache sized for that many tokens in all (the prompt plus the tokens you will feed),
    instead of a growing one; it must be at least the prompt's length.
    """
    _validate(model, 1, 1.0, None, None, True, cache_policy)
    ids, _ = model.tokenize(prompt)
    if ids.shape[0] != 1:
        raise InputError("prefill() takes one prompt.")
    if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool)
                                 or capacity < ids.shape[1]):
        raise InputError(f"capacity must be an integer >= the prompt's {ids.shape[1]} tokens, got {capacity!r}.")
    cache = KVCache.empty(model) if capacity is None else KVCache.preallocated(model, capacity)
    with model._session(interventions) as session:
        _observe_attention(model, session, cache_policy)
        with session, torch.no_grad():
            logits = cached_forward(model, cache, ids, last_only=True)[0, -1]
    if cache_policy is not None:
        cache_policy.apply(cache, StepContext(0, ids.shape[1], ids))
    return (cache, logits) if return_logits else cache


def generate(model, prompt, max_new_tokens: int = 20, *, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             use_cache: bool = True, cache_policy: CachePolicy | None = None, stop_at_eos: bool = True,
             interventions=(), on_step=None, cache: str = "dynamic") -> Generation | list[Generation]:
    """Generate a continuation token by token.

    With use_cache=True the model runs once over the prompt (prefill) and then one token per step
    against a ``KVCache``; ``cache_policy.apply(cache, ctx)`` runs after prefill and after every
    step and may drop, merge or quantize entries. With use_cache=False every step recomputes the
    whole sequence (the reference the cached path must match). Interventions apply at every step.
    ``on_step(cache, ctx)`` is called after the policy at every step, to watch the cache live.
    A list of prompts is generated one prompt at a time (no padding inside the cache).

    cache: "dynamic" (default; the cache grows by one concatenation per step, like HF's
    ``DynamicCache``) or "preallocated" (alias "static"; like HF's ``StaticCache``, buffers for
    prompt + max_new_tokens allocated once and written in place; eviction compacts in place).
    Steps that need no hook (no hook intervention, no policy observing attention) run the
    hook-free plain view of the model (``Model.forward_tokens``).
    """
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise InputError("The prompt list is empty: pass at least one string.")
        return [generate(model, p, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=None if seed is None else seed + i, use_cache=use_cache,
                         cache_policy=cache_policy, stop_at_eos=stop_at_eos, interventions=interventions,
                         on_step=on_step, cache=cache)
                for i, p in enumerate(prompt)]
    _validate(model, max_new_tokens, temperature, top_k, top_p, use_cache, cache_policy)
    if cache not in CACHE_KINDS:
        raise InputError(f"cache must be one of {CACHE_KINDS}, got {cache!r}.")
    ids, lengths = model.tokenize(prompt)
    if ids.shape[0] != 1:
        raise InputError("generate() takes one prompt at a time (or a list of strings).")
    t0 = ids.shape[1]
    if t0 + max_new_tokens > model.info.n_ctx:
        raise InputError(f"Prompt ({t0} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                         f"{model.info.n_ctx}. Generate fewer tokens or shorten the prompt.")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    eos = model.tokenizer.eos_token_id
    new, step_logits, stats = [], [], []
    # the last chosen token is never fed, so the cache sees t0 + max_new_tokens - 1 tokens
    kv = new_cache(model, cache, t0 + max_new_tokens - 1) if use_cache else None
    with model._session(interventions) as session:
        _observe_attention(model, session, cache_policy)
        with session, torch.no_grad():
            seq = ids
            for step in range(max_new_tokens):
                if kv is None:
                    logits = model.forward_tokens(seq)[0, -1]
                else:
                    inp = seq if step == 0 else seq[:, -1:]
                    logits = cached_forward(model, kv, inp, last_only=True)[0, -1]
                    ctx = StepContext(step, inp.shape[1], inp)
                    if cache_policy is not None:
                        cache_policy.apply(kv, ctx)
                    if on_step is not None:
                        on_step(kv, ctx)
                    stats.append(kv.stats())
                tok = _choose(logits, do_sample, temperature, top_k, top_p, gen)
                new.append(tok)
                step_logits.append(logits.detach().float().cpu())
                seq = torch.cat([seq, torch.tensor([[tok]], device=seq.device)], dim=1)
                if stop_at_eos and tok == eos:
                    break
    new_t = torch.tensor(new, dtype=torch.long)
    return Generation(prompt, ids[0].cpu(), new_t, model.to_string(new), torch.stack(step_logits), stats, kv,
                      cache_policy.name if cache_policy else "full cache")
