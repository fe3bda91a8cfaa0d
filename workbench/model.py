"""The hookable model wrapper: one object over a HF model, its tokenizer and a TransformerBridge.

Engine: TransformerLens ``TransformerBridge`` (see README, "Design"). Every TransformerLens call
of the project lives in ``workbench/``; the rest of the code talks to ``Model`` only.
"""
from __future__ import annotations

import inspect
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from . import edits as _edits
from .capture import (
    AttentionSummary,
    CaptureEstimate,
    CaptureItem,
    capture_shape,
    check_budget,
    check_device_memory,
    estimate,
    plan_capture,
    apply_threads,
    resolve_capture_device,
    resolve_positions,
    settings,
    summarize_pattern,
)
from .errors import InputError
from .hook_names import layer_of_hook
from .hooks import HookSession, workbench_hooks_on
from .intervention import Compose, Intervention
from .plain import PlainView
from .run import Run
from .session import ForwardSession, attention_observer_hooks
from .weights import Weights, read_weights


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    normalization: str  # "RMS" or "LN"
    positional: str  # "rotary" or "standard"
    rope_theta: float | None
    # Architecture traits analyses must know about (all off for Llama-like models):
    logit_softcap: float | None = None   # final logits = cap · tanh(logits / cap) (Gemma 2)
    attn_softcap: float | None = None    # attention scores soft-capped before the softmax (Gemma 2)
    parallel_attn_mlp: bool = False      # attention and MLP read the same residual (GPT-NeoX, GPT-J)
    post_norms: bool = False             # norms after attention and after the MLP (Gemma)
    qk_norm: bool = False                # per-head norms of queries and keys (Qwen 3, Gemma 3)
    rotary_dim: int | None = None        # dims of each head that RoPE rotates (< d_head: partial rotary)
    sliding_window: int | None = None    # window of the sliding-window layers
    layer_types: tuple[str, ...] | None = None  # per layer "full_attention" / "sliding_attention"

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` attends over a sliding window only."""
        return bool(self.layer_types) and self.layer_types[layer] == "sliding_attention"

    @property
    def group_size(self) -> int:
        """Query heads per KV head; query head h reads KV head h // group_size."""
        return self.n_heads // self.n_kv_heads


def _split_dormant(bridge, probe_ids) -> tuple[set[str], dict[str, nn.Module]]:
    """(names that never fire, {name: HookPoint} of those that do) from one forward on ``probe_ids``."""
    points = dict(bridge.hook_dict)
    fired: set[str] = set()
    handles = [p.register_forward_hook(lambda _m, _i, _o, n=n: fired.add(n)) for n, p in points.items()]
    try:
        with torch.no_grad():
            bridge(probe_ids, return_type="logits")
    finally:
        for h in handles:
            h.remove()
    return set(points) - fired, {n: p for n, p in points.items() if n in fired}


# Hooks outside the blocks that fire before block 0 (embeddings, rotary tables), so a truncated
# forward (stop_at_layer) still reaches them.
_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "embed.", "pos_embed.", "rotary_emb.")


def _block_of(it: CaptureItem, n_layers: int) -> int:
    """Block a capture fires in: -1 before the blocks, ``n_layers`` after them (ln_final, unembed).

    Used by the stop_at_layer check; ``it.layer`` is None for every non-per-layer name, which
    used to refuse ``capture=["embed"]`` with stop_at_layer although the embedding always runs.
    """
    if it.layer is not None:
        return it.layer
    layer = layer_of_hook(it.hook)  # full names with no short spec
    if layer is not None:
        return layer
    return -1 if it.hook.startswith(_BEFORE_BLOCKS) else n_layers


@dataclass(frozen=True)
class ParityReport:
    """Wrapper versus plain HF on a fixed probe, computed at load time."""

    max_abs_logprob_diff: float
    top1_agreement: float
    n_tokens: int
    probe: str

    def ok(self, tol: float = 1e-4) -> bool:
        return self.max_abs_logprob_diff <= tol and self.top1_agreement == 1.0


class Model:
    """A language model with canonical hooks, captures, interventions and a managed KV cache.

    Build one with ``workbench.load()``. Tokenization never adds a BOS token for SmolLM2 (it was
    trained without one), so position 0 is the first real token and becomes the attention sink.
    """

    def __init__(self, hf: nn.Module, tokenizer, bridge, info: ModelInfo, fingerprint: str,
                 parity: ParityReport | None, device: torch.device):
        self.hf = hf
        self.tokenizer = tokenizer
        self.bridge = bridge
        self.info = info
        self.fingerprint = fingerprint
        self.parity = parity
        self.device = device
        # Only hook points that fire in a real forward pass: TransformerLens also lists
        # compatibility points (hook_result, hook_q_input, pos_embed on rotary models, ...) that
        # this model never computes, and a hook on one of those would silently capture nothing.
        self._dormant, self._points = _split_dormant(bridge, torch.zeros((1, 2), dtype=torch.long, device=device))
        self._active: list[Intervention] = []
        self._editors: list[_edits.WeightEditor] = []
        self._weights: Weights | None = None
        self._weights_key: tuple | None = None
        self._weights_version = 0
        self._linear_kinds: tuple[str, ...] | None = None
        self._plain_view: PlainView | None = None
        fwd = getattr(type(hf), "forward", None)
        self._keeps_logits = fwd is not None and "logits_to_keep" in inspect.signature(fwd).parameters
        #: forward passes run so far (every run, generation step, session forward): for tests and
        #: benchmarks that check work is not repeated
        self.forward_count = 0

    # ------------------------------------------------------------------ introspection
    def hook_names(self) -> list[str]:
        """Every full TransformerLens hook name this model exposes."""
        return sorted(self._points)

    def leftover_hooks(self) -> list[str]:
        """Modules still carrying a hook the workbench attached (always empty after a public call)."""
        return workbench_hooks_on(self.bridge)

    def W_O(self, layer: int) -> torch.Tensor:
        """(n_heads, d_head, d_model) output projection of one layer, per head."""
        self.check_layer(layer)
        w = self.bridge.blocks[layer].attn.W_O
        return self.bridge._reshape_o(w)

    # ------------------------------------------------------------------ weights
    def _param_key(self) -> tuple:
        # identity, storage and in-place version of every parameter: changes on any edit (a swapped
        # tensor, an in-place write, a replaced module), costs microseconds
        return tuple((id(p), p.data_ptr(), p._version) for p in self.hf.parameters())

    @property
    def weights_version(self) -> int:
        """A counter that grows whenever the model's weights change (edits, replaced modules, in-place writes)."""
        key = self._param_key()
        if key != self._weights_key:
            self._weights_key = key
            self._weights_version += 1
            self._weights = None
        return self._weights_version

    def weights(self) -> Weights:
        """The weights analyses read, in TransformerLens layouts (``workbench.weights``), rebuilt when they
        change: inside ``intervene(...)`` this is what the edited model runs with. Tensors are detached
        views; treat them as read-only and edit through ``edit_weights()``."""
        version = self.weights_version
        if self._weights is None:
            self._weights = read_weights(self.bridge, self.info, version)
        return self._weights

    def edit_weights(self, label: str = ""):
        """``with model.edit_weights() as ed:`` edit weights/components until the block ends, then restore
        exactly (see ``workbench.edits.WeightEditor``)."""
        return _edits.editing(self, label)

    def active_edits(self) -> list[tuple[str, str]]:
        """(target, what) of every weight edit in force right now (e.g. ("L3.down", "replaced by ...")),
        so a method can refuse to quantize an already-quantized linear."""
        return [r for ed in self._editors for r in ed.records]

    @property
    def linear_kinds(self) -> tuple[str, ...]:
        """Layer-wise linears that can be read and edited by kind on this model, among
        q, k, v, o (attention) and gate, up, down (MLP)."""
        if self._linear_kinds is None:
            blk = self.bridge.blocks[0]
            used = {id(m) for m in _edits.original(blk).modules()}
            kinds = []
            for kind, (part, child) in _edits.LINEAR_KINDS.items():
                wrapper = getattr(getattr(blk, part, None), "_modules", {}).get(child)
                if wrapper is not None and (id(wrapper) in used or id(_edits.original(wrapper)) in used):
                    kinds.append(kind)
            self._linear_kinds = tuple(kinds)
        return self._linear_kinds

    def _check_kind(self, kind: str) -> str:
        if kind not in self.linear_kinds:
            from .hook_names import suggest

            raise InputError(f"Linear kind {kind!r} is not available on this model.{suggest(str(kind), self.linear_kinds)} "
                             f"Available: {', '.join(self.linear_kinds) or 'none'}.")
        return kind

    def linear_wrapper(self, layer: int, kind: str) -> nn.Module:
        """The TransformerBridge component around one linear (for ``workbench.edits`` only)."""
        layer = self.check_layer(layer)
        part, child = _edits.LINEAR_KINDS[self._check_kind(kind)]
        return getattr(self.bridge.blocks[layer], part)._modules[child]

    def linear_module(self, layer: int, kind: str) -> nn.Module:
        """The module that computes one linear now (for ``workbench.edits`` only)."""
        return _edits.original(self.linear_wrapper(layer, kind))

    def linear_weight(self, layer: int, kind: str) -> torch.Tensor:
        """(out, in) weight of one linear, as ``nn.Linear`` stores it (a detached view: read-only)."""
        mod = self.linear_module(layer, kind)
        w = getattr(mod, "weight", None)
        if callable(w):  # torch.ao dynamic quantized linears expose weight() as a method
            w = w()
        if not isinstance(w, torch.Tensor):
            raise InputError(f"Linear L{layer}.{kind} is a {type(mod).__name__} that exposes no weight tensor.")
        if w.is_quantized:
            w = w.dequantize()
        w = w.detach()
        return w.t() if _edits.is_conv1d(mod) else w

    def linear_bias(self, layer: int, kind: str) -> torch.Tensor | None:
        """(out,) bias of one linear, or None."""
        b = getattr(self.linear_module(layer, kind), "bias", None)
        if callable(b):
            b = b()
        return None if b is None else b.detach()

    def norm_module(self, layer: int | None, which: str = "ln1") -> nn.Module:
        """The HF norm module ``which`` of ``layer`` ("ln1"/"ln2" before attention / the MLP, "ln1_post"/"ln2_post"
        after them on models with post norms), or the final norm for layer=None (for ``workbench.edits`` only)."""
        if layer is None:
            return _edits.original(self.bridge.ln_final)
        if which not in ("ln1", "ln2", "ln1_post", "ln2_post"):
            raise InputError(f"which must be 'ln1' (before attention), 'ln2' (before the MLP), 'ln1_post' or "
                             f"'ln2_post' (after them, models with post norms only), got {which!r}.")
        blk = self.bridge.blocks[self.check_layer(layer)]
        if which.endswith("_post") and which not in blk._modules:
            raise InputError(f"{self.info.name} has no norm {which!r} after attention / the MLP (no post norms); "
                             "use 'ln1' or 'ln2'.")
        return _edits.original(getattr(blk, which))

    def embedding_module(self) -> nn.Module:
        return _edits.original(self.bridge.embed)

    def unembedding_module(self) -> nn.Module:
        return _edits.original(self.bridge.unembed)

    def component_wrapper(self, layer: int, part: str) -> nn.Module:
        """The TransformerBridge wrapper of ``part`` ("block", "attn", "mlp") of ``layer`` (``workbench.edits``)."""
        blk = self.bridge.blocks[self.check_layer(layer)]
        return blk if part == "block" else getattr(blk, part)

    def is_shared_parameter(self, p: torch.Tensor) -> bool:
        """Whether ``p`` is held by more than one module (tied embeddings)."""
        owners = 0
        for m in self.hf.modules():
            owners += sum(1 for q in m._parameters.values() if q is p)
            if owners > 1:
                return True
        return False

    def parameter_bytes(self) -> int:
        """Bytes of every distinct tensor the model holds now (parameters and buffers, quantized modules'
        packed weights included): the physical size of the weights."""
        from .kv_cache import _storage_key

        seen, total = set(), 0
        tensors = list(self.hf.parameters()) + list(self.hf.buffers())
        for m in self.hf.modules():  # torch.ao quantized linears keep packed weights outside parameters
            if type(m).__name__ == "LinearPackedParams" and callable(getattr(m, "_weight_bias", None)):
                w, b = m._weight_bias()  # unpacks a copy: counted by size, once per module
                tensors += [w] + ([b] if b is not None else [])
            extra = getattr(m, "stored_tensors", None)
            if callable(extra):
                tensors += list(extra())
        for t in tensors:
            key = _storage_key(t) if not t.is_quantized else ("q", id(t))
            if key in seen:
                continue
            seen.add(key)
            total += t.numel() * t.element_size() if t.is_quantized else t.untyped_storage().nbytes()
        return total

    def rope_inv_freq(self, layer: int | None = None) -> tuple[torch.Tensor, str] | None:
        """(inv_freq (d_rot/2,), where it was read) of the rotary embedding that ``layer`` uses (its
        ``inv_freq`` buffer, RoPE scaling included; models with several, e.g. Gemma 3's local and global
        layers, keep one per layer type), or None when the model has no rotary embedding."""
        kind = None
        if layer is not None and self.info.layer_types:
            kind = self.info.layer_types[self.check_layer(layer)]
        found = None
        for name, buf in self.hf.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if not leaf.endswith("inv_freq") or "original" in leaf or buf.ndim != 1 or not buf.numel():
                continue
            if kind is not None and leaf == f"{kind}_inv_freq":
                return buf.detach(), f"hf:{name}"
            found = found or (buf.detach(), f"hf:{name}")
        return found

    def check_layer(self, layer) -> int:
        n = self.info.n_layers
        if not isinstance(layer, int) or isinstance(layer, bool) or not -n <= layer < n:
            raise InputError(f"Layer {layer!r} is out of range: this model has {n} layers (0..{n - 1}).")
        return layer % n

    def check_heads(self, heads) -> list[int]:
        heads = [heads] if isinstance(heads, int) else list(heads)
        n = self.info.n_heads
        for h in heads:
            if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < n:
                raise InputError(f"Head {h!r} is out of range: this model has {n} query heads per layer (0..{n - 1}).")
        if not heads:
            raise InputError("No heads given.")
        return heads

    # ------------------------------------------------------------------ tokens
    def tokenize(self, prompts) -> tuple[torch.Tensor, list[int]]:
        """Prompts -> ((B, T) right-padded ids on the model's device, real lengths).

        Accepts a string, a list of strings, or integer token ids (T,) / (B, T).
        """
        if isinstance(prompts, torch.Tensor):
            # bool/complex tensors are not floating point either, but the embedding rejects them
            # with a raw torch error (or max() fails): refuse every non-integer dtype here.
            not_int = prompts.is_floating_point() or prompts.is_complex() or prompts.dtype == torch.bool
            if not_int or prompts.ndim not in (1, 2) or prompts.numel() == 0:
                raise InputError("Token input must be a non-empty integer tensor of shape (T,) or (B, T), got a "
                                 f"{str(prompts.dtype).replace('torch.', '')} tensor of shape {tuple(prompts.shape)}. "
                                 "Pass ids as torch.long (e.g. torch.tensor([[...]])), or pass the text itself.")
            ids = (prompts[None] if prompts.ndim == 1 else prompts).long()  # uint8/int32 -> long for the embedding
            lo, hi = int(ids.min()), int(ids.max())
            if hi >= self.info.d_vocab or lo < 0:
                raise InputError(f"Token ids must lie in [0, {self.info.d_vocab}) for this model's vocabulary, "
                                 f"got ids from {lo} to {hi}. Were they made by another tokenizer?")
            self._check_length(ids.shape[1])
            return ids.to(self.device), [ids.shape[1]] * ids.shape[0]
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise InputError(f"Prompts must be a string, a list of strings or a token tensor; got {type(prompts).__name__}.")
        if not prompts:
            raise InputError("The prompt list is empty: pass at least one string.")
        seqs = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise InputError(f"Prompt {i} is of type {type(p).__name__}, not a string. Pass strings, or token "
                                 "ids as an integer tensor of shape (T,) or (B, T), e.g. torch.tensor([[...]]).")
            if not p:
                raise InputError(f"Prompt {i} is an empty string: it has no tokens to run.")
            ids = self.tokenizer(p, add_special_tokens=True)["input_ids"]
            self._check_length(len(ids), i)
            seqs.append(ids)
        lengths = [len(s) for s in seqs]
        pad = self.pad_id
        out = torch.full((len(seqs), max(lengths)), pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s)
        return out.to(self.device), lengths

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else (t.eos_token_id or 0)

    def _check_length(self, n: int, i: int = 0) -> None:
        if n > self.info.n_ctx:
            raise InputError(f"Prompt {i} has {n} tokens, longer than the model's context of {self.info.n_ctx}. "
                             "Shorten it or split it into windows.")

    def str_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def to_string(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    # ------------------------------------------------------------------ interventions
    @contextmanager
    def intervene(self, *interventions: Intervention) -> Iterator["Model"]:
        """Apply interventions to every run and generation inside the ``with`` block."""
        iv = Compose(interventions)
        iv.validate(self)
        # Check hook names now, at the ``with`` line, not at the first run inside the block.
        HookSession(self._points, self._dormant).add_all(iv.hooks(self))
        with iv.applied(self):
            self._active.append(iv)
            try:
                yield self
            finally:
                self._active.remove(iv)

    @contextmanager
    def _session(self, extra: Sequence[Intervention] = ()) -> Iterator[HookSession]:
        """One hook session holding active + per-call interventions (their hooks first)."""
        if isinstance(extra, Intervention):
            extra = [extra]
        call = Compose(list(extra))
        call.validate(self)
        session = HookSession(self._points, self._dormant)
        session.add_all(Compose(self._active + [call]).hooks(self))
        with ExitStack() as stack:
            stack.enter_context(call.applied(self))
            yield session

    @contextmanager
    def session(self, interventions: Sequence[Intervention] = (), hooks=(), observe_attention=None,
                required: bool = True, grad: bool = False) -> Iterator[ForwardSession]:
        """Several forward passes under one set of hooks: ``with model.session(...) as s: s.forward(ids)``.

        interventions: applied for the block, after those of an enclosing ``intervene``.
        hooks: (full hook name, fn(tensor, name) -> tensor | None) pairs, run after the interventions'
            hooks; with ``required`` each must fire at least once before the block ends.
        observe_attention: callable (layer, pattern (B, H, n_new, N)) fed every layer's attention rows
            (see ``workbench.session``); ``grad``: keep autograd on (for Jacobians through the model).
        """
        with self._session(interventions) as hs:
            for name, fn in hooks:
                hs.add(name, fn, required)
            for name, fn in attention_observer_hooks(self, observe_attention):
                hs.add(name, fn)
            with hs, torch.set_grad_enabled(grad):
                yield ForwardSession(self, hs)

    def forward_tokens(self, ids: torch.Tensor, stop_at_layer: int | None = None, **kwargs) -> torch.Tensor | None:
        """One forward pass of (B, T) ids under whatever hooks are attached (inside ``session``); logits (B, T, V).

        With no hook attached anywhere (no capture, intervention hook, attention observer or required
        hook) and no ``stop_at_layer``, the pass runs the hook-free plain view of the model instead of
        the TransformerBridge (``workbench.plain``): same modules and weights, identical logits, none
        of the hook machinery's cost. ``fast_path_status()`` says which path the next pass takes."""
        return self._forward(ids, self._route(stop_at_layer, kwargs), stop_at_layer, **kwargs)

    # ------------------------------------------------------------------ the hook-free path
    def _route(self, stop_at_layer: int | None = None, kwargs: dict | None = None) -> nn.Module | None:
        """The plain module when the next forward needs no hook, else None (the hooked bridge path).

        An explicit ``attention_mask`` also takes the hooked path: the bridge derives position ids from
        a padded mask, which the plain HF forward does not."""
        if stop_at_layer is not None or not settings.fast_path or (kwargs and "attention_mask" in kwargs):
            return None
        if self._plain_view is None:
            self._plain_view = PlainView(self.hf, self.bridge, self._verify_plain)
        return None if self._plain_view.check() is not None else self._plain_view.module

    def _forward(self, ids: torch.Tensor, plain: nn.Module | None, stop_at_layer: int | None = None, **kwargs):
        """One forward through ``plain`` (from ``_route``) or, when None, through the bridge with its hooks."""
        apply_threads()
        self.forward_count += 1
        if plain is not None:
            if kwargs.get("past_key_values") is None:
                kwargs.setdefault("use_cache", False)  # nothing to keep: skip building a throwaway cache
            return plain(input_ids=ids, **kwargs).logits
        return self.bridge(ids, return_type="logits", stop_at_layer=stop_at_layer, **kwargs)

    def _verify_plain(self, module: nn.Module) -> str | None:
        """None when ``module`` (a freshly built plain view) reproduces the hooked forward exactly on a probe."""
        ids = (torch.arange(1, 8, device=self.device) % self.info.d_vocab)[None]
        try:
            with torch.no_grad():
                ref = self.bridge(ids, return_type="logits")
                got = module(input_ids=ids, use_cache=False).logits
        except Exception as exc:  # the hooked path fails too, or only the plain one: either way, not usable
            return f"the hook-free forward could not be checked ({type(exc).__name__}: {exc})"
        same = got.shape == ref.shape and bool(((got == ref) | (got.isnan() & ref.isnan())).all())
        if not same:
            diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("nan")
            return f"the hook-free forward differs from the hooked one on a probe (max |diff| {diff:.2e})"
        return None

    def fast_path_status(self) -> str | None:
        """None when a forward started now (with no hook attached) runs the hook-free plain view; otherwise
        why it takes the hooked TransformerBridge path (``workbench.settings.fast_path`` off, hooks attached,
        an architecture the plain view cannot mirror exactly, ...)."""
        if not settings.fast_path:
            return "workbench.settings.fast_path is False"
        if self._plain_view is None:
            self._plain_view = PlainView(self.hf, self.bridge, self._verify_plain)
        return self._plain_view.check()

    @contextmanager
    def frozen_parameters(self) -> Iterator["Model"]:
        """Parameters stop requiring grad inside the block (only inputs' gradients are computed); restored after."""
        params = [p for p in self.hf.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield self
        finally:
            for p in params:
                p.requires_grad_(True)

    @contextmanager
    def without_interventions(self) -> Iterator["Model"]:
        """The clean model for the duration of the block: hook interventions of enclosing ``intervene``
        blocks are suspended and weight edits in force are undone, then everything is put back."""
        saved, self._active = self._active, []
        try:
            with ExitStack() as stack:
                for ed in reversed(self._editors):
                    stack.enter_context(ed.suspended())
                yield self
        finally:
            self._active = saved

    def describe_interventions(self, extra: Sequence[Intervention] = ()) -> str:
        parts = self._active + list(extra if not isinstance(extra, Intervention) else [extra])
        return " + ".join(p.describe() for p in parts)

    # ------------------------------------------------------------------ forward
    def estimate_capture(self, prompts, capture=(), layers=None, positions=None, attention: str = "full",
                         logits: str | None = "all", last_rows: int = 8, max_bytes: int | None = None) -> CaptureEstimate:
        """Bytes a ``run`` with these arguments would hold, without running anything."""
        tokens, _ = self.tokenize(prompts)
        items = plan_capture(capture, layers, set(self._points), self.info.n_layers, attention,
                             self._dormant)
        return self._estimate(items, tokens, positions, logits, last_rows, max_bytes)

    def _dims(self) -> dict[str, int]:
        i = self.info
        return {"d": i.d_model, "h": i.n_heads, "g": i.n_kv_heads, "e": i.d_head, "f": i.d_mlp}

    def _capture_buffers(self, items, tokens, pos, device=None) -> dict[str, torch.Tensor]:
        """Empty output tensors for every full capture, allocated before the forward pass.

        Allocating what the run will hold up front, then copying into it, keeps the captures out
        of the allocator's way: the forward's short-lived buffers are reused layer after layer
        instead of being stranded between captures (with glibc, process memory then stays
        close to the guard's estimate; see BENCHMARKS.md).
        """
        b, t = tokens.shape
        dtype = next(self.hf.parameters()).dtype
        dims, n_pos = self._dims(), None if pos is None else len(pos)
        device = self.device if device is None else device
        return {it.name: torch.empty(capture_shape(it, dims, b, t, n_pos), dtype=dtype, device=device)
                for it in items if not it.summary}

    def _estimate(self, items, tokens, positions, logits, last_rows, max_bytes) -> CaptureEstimate:
        b, t = tokens.shape
        pos = resolve_positions(positions, t)
        i = self.info
        dims = self._dims()
        lp = {"all": t, "last": 1, None: 0}
        if logits not in lp:
            raise InputError(f"logits must be 'all', 'last' or None, got {logits!r}.")
        budget = settings.capture_budget_bytes if max_bytes is None else int(max_bytes)
        # captures and logits have the weights' dtype (2 bytes per value for a bf16/fp16 model)
        bytes_per = next(self.hf.parameters()).element_size()
        return estimate(items, dims, b, t, None if pos is None else len(pos), lp[logits], i.d_vocab, budget, last_rows,
                        bytes_per=bytes_per)

    def run(self, prompts, capture=(), *, layers=None, positions=None, attention: str = "full",
            skip_queries: int = 0, last_rows: int = 8, logits: str | None = "all",
            interventions: Sequence[Intervention] = (), stop_at_layer: int | None = None,
            max_bytes: int | None = None, grad: bool = False, capture_device=None) -> Run:
        """Run prompts through the model and return a ``Run``.

        capture: short names (see ``workbench.hook_names.SPECS``) expanded over ``layers``, or full
            TransformerLens hook names. positions: ints, a slice, or None for all (applied on the
            position/query axis). attention="summary" keeps per-layer ``AttentionSummary``s instead
            of full patterns (for long prompts). stop_at_layer: truncated forward, no logits.
            The memory guard refuses a capture above ``max_bytes`` (default
            ``workbench.settings.capture_budget_bytes``) before running; for a model on a CUDA
            device it also refuses a run whose device-resident part (captures kept there, logits,
            the largest transient tensor) exceeds the device's free memory.
            capture_device: where captures (and attention summaries) are kept: None (the model's
            device), "cpu" (offloaded: each capture is copied to host memory as its hook fires, so
            only one layer's activation is on the GPU at a time) or "cuda".
        """
        tokens, lengths = self.tokenize(prompts)
        items = plan_capture(capture, layers, set(self._points), self.info.n_layers, attention,
                             self._dormant)
        if logits not in ("all", "last", None):  # checked here too: stop_at_layer overrides it below
            raise InputError(f"logits must be 'all', 'last' or None, got {logits!r}.")
        if stop_at_layer is not None:
            if (not isinstance(stop_at_layer, int) or isinstance(stop_at_layer, bool)
                    or not 0 < stop_at_layer <= self.info.n_layers):
                raise InputError(f"stop_at_layer must be an integer in 1..{self.info.n_layers}, got {stop_at_layer!r}.")
            late = [it.name for it in items if _block_of(it, self.info.n_layers) >= stop_at_layer]
            if late:
                raise InputError(f"Capture {late[0]!r} lies at or after stop_at_layer={stop_at_layer}; it would never fire.")
            logits = None
        cap_dev = resolve_capture_device(capture_device, self.device)
        est = self._estimate(items, tokens, positions, logits, last_rows, max_bytes)
        check_budget(est)
        check_device_memory(est, self.device, cap_dev)
        if skip_queries < 0 or skip_queries >= tokens.shape[1] and attention == "summary":
            raise InputError(f"skip_queries={skip_queries} leaves no query in a {tokens.shape[1]}-token prompt.")
        pos = resolve_positions(positions, tokens.shape[1])
        captures: dict[str, torch.Tensor] = {}
        summaries: dict[int, AttentionSummary] = {}
        buffers = self._capture_buffers(items, tokens, pos, cap_dev)
        with self._session(interventions) as session:
            for it in items:
                session.add(it.hook, self._capture_fn(it, pos, captures, summaries, skip_queries, last_rows, lengths,
                                                      buffers.get(it.name), cap_dev))
            with session, torch.set_grad_enabled(grad):
                out = self.forward_tokens(tokens, stop_at_layer=stop_at_layer)
        kept = None
        if logits == "all":
            kept = out
        elif logits == "last":
            kept = out[torch.arange(len(lengths)), torch.tensor(lengths, device=out.device) - 1]
        str_toks = [self.str_tokens(tokens[i, :n].tolist()) for i, n in enumerate(lengths)]
        return Run(tokens, str_toks, lengths, kept, captures, pos, summaries, est, self.describe_interventions(interventions))

    def _capture_fn(self, it: CaptureItem, pos, captures, summaries, skip_queries, last_rows, lengths, out=None,
                    device=None):
        layout = it.spec.layout if it.spec else "btd"
        axis = layout.index("t") if "t" in layout else (layout.index("q") if "q" in layout else None)
        derived = it.spec is not None and it.spec.derived_from == "z"
        w_o = self.W_O(it.layer).detach() if derived else None

        def fn(x: torch.Tensor, _name: str):
            if it.summary:
                sm = summarize_pattern(x, it.layer, skip_queries, last_rows, lengths)
                summaries[it.layer] = sm if device is None or device == x.device else sm.to(device)
                return None
            y = x.detach()
            if pos is not None and axis is not None:
                y = y.index_select(axis, pos.to(y.device))
            if derived:  # (B, T, H, e) x (H, e, d) -> (B, T, H, d)
                y = torch.einsum("bthe,hed->bthd", y, w_o)
            if out is not None and out.shape == y.shape and out.dtype == y.dtype:
                captures[it.name] = out.copy_(y)
            else:  # a full name whose shape differs from the (B, T, d_model) guess
                if device is not None and y.device != device:
                    captures[it.name] = y.to(device)
                else:
                    captures[it.name] = y.clone() if y.data_ptr() == x.data_ptr() else y
            return None

        return fn

    def transformer_lens_cache(self, ids: torch.Tensor):
        """TransformerLens' own ``run_with_cache`` on this model's bridge: (logits, ActivationCache) over every
        hook point. For comparisons with TransformerLens (benchmarks); ``run`` is the workbench's way to capture."""
        apply_threads()
        self.forward_count += 1
        return self.bridge.run_with_cache(ids)

    def generate(self, prompt, max_new_tokens: int = 20, **kwargs):
        """Generate from one prompt (or each of a list); see ``workbench.generation.generate``."""
        from .generation import generate

        return generate(self, prompt, max_new_tokens=max_new_tokens, **kwargs)

    def prefill(self, prompt, cache_policy=None, interventions=(), capacity: int | None = None):
        """Run one prompt and return its ``KVCache`` (per layer and KV head, with byte counts); with
        ``capacity``, a preallocated cache sized for that many tokens (prompt + tokens to feed)."""
        from .generation import prefill

        return prefill(self, prompt, cache_policy=cache_policy, interventions=interventions, capacity=capacity)

    def __repr__(self) -> str:
        i = self.info
        par = f", parity max|Δlogp|={self.parity.max_abs_logprob_diff:.1e}" if self.parity else ""
        return (f"Model({i.name}: {i.architecture}, {i.n_layers} layers, {i.n_heads} heads "
                f"({i.n_kv_heads} KV), d_model {i.d_model}, on {self.device}{par})")
