"""The hook-free view of a wrapped model: what runs when nothing is captured, hooked or observed.

TransformerLens' ``TransformerBridge`` does not wrap a HF model from the outside: it replaces the HF
submodules *in place* by bridge components (``hf.model.layers[0]`` is a ``BlockBridge``, its
``q_proj`` a ``LinearBridge`` whose ``_original_component`` is the ``nn.Linear``), and several
components re-implement the computation to expose hook points (the attention computes scores and
pattern itself). Calling ``model.hf(...)`` therefore still pays for every hook point.

``PlainView`` is a structural shallow copy of that module tree in which every bridge component is
replaced by the module it wraps. Only containers on the way to a bridge are copied (a new
``_modules`` dict; everything else, parameters and buffers included, is shared), and every leaf
(``nn.Linear``, norms, embeddings, a torch.ao quantized linear, a replacement component) is the
*same object* the bridge calls. So weight edits (``Parameter.data`` swaps), untied parameters and
anything set on a leaf are seen by both paths at once. A module replaced inside the bridge (the
weight editor's ``replace_linear`` / ``replace_component``, or any other assignment) changes the
tree's *structure*: the child dicts (``_modules``) of the modules the view was built from are
swapped for a ``dict`` subclass that counts every assignment and deletion (``_WatchedDict``), so a
structural change is seen in O(1) before the next forward and the view is rebuilt. (Plain Python
attributes of a copied container, which are neither modules, parameters nor buffers, are read when
the view is built.)

Fused QKV (GPT-2's ``c_attn``, GPT-NeoX's ``query_key_value``): the bridge splits it into separate
q, k, v linears and runs those (they are what ``edit_weights`` edits), so the plain view runs the
same three linears and concatenates their outputs in the fused layout. Other fused layouts are not
supported: the model then always takes the hooked path (``reason`` says why). Norms the bridge
computes itself (TransformerLens' LayerNorm) are computed the same way (``_BridgeNorm``).

Exactness is checked, not assumed: after every (re)build, one forward of a short probe through the
plain view must reproduce the hooked forward exactly (``torch.equal``); otherwise the plain view
stays disabled with the difference as its ``reason``.
"""
from __future__ import annotations

import copy
import inspect
from typing import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import fast_attention

# TransformerLens configuration switches that change what the hooked path computes; with any of them
# on, the plain HF computation is not the same function, so the plain view is refused.
_COMPUTE_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_attn_result", "use_hook_mlp_in")


def _is_bridge(module: nn.Module) -> bool:
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    return isinstance(module, GeneralizedComponent)


class _WatchedDict(dict):
    """A module's child dict that counts every real change (a child set to another object, added or
    removed), so ``PlainView`` sees structural edits in O(1); no-op writes are not counted."""

    epoch = 0  # class-wide: a change in any watched dict of any model

    def __setitem__(self, key, value):
        if super().get(key, _MISSING) is not value:
            _WatchedDict.epoch += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        _WatchedDict.epoch += 1
        super().__delitem__(key)

    def pop(self, key, *default):
        if key in self:
            _WatchedDict.epoch += 1
        return super().pop(key, *default)

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def clear(self):
        if self:
            _WatchedDict.epoch += 1
        super().clear()

    def setdefault(self, key, default=None):
        if key not in self:
            _WatchedDict.epoch += 1
        return super().setdefault(key, default)

    def popitem(self):
        _WatchedDict.epoch += 1
        return super().popitem()

    def __reduce__(self):  # copies and pickles become plain dicts
        return dict, (dict(self),)


_MISSING = object()


def _watch(mod: nn.Module) -> None:
    """Swap ``mod``'s child dict for a ``_WatchedDict`` (same contents)."""
    children = mod.__dict__.get("_modules")
    if children is not None and type(children) is not _WatchedDict:
        mod.__dict__["_modules"] = _WatchedDict(children)


class PlainViewError(RuntimeError):
    """The plain view cannot mirror this model (the reason is the message)."""


class _SplitQKV(nn.Module):
    """A fused QKV projection computed from the separate q, k, v linears the bridge runs, in the fused
    module's output layout: GPT-2's ``c_attn`` is ``[q | k | v]`` (``head_size`` None); GPT-NeoX's
    ``query_key_value`` is ``[q_h | k_h | v_h]`` per head (``head_size`` = d_head)."""

    def __init__(self, q: nn.Module, k: nn.Module, v: nn.Module, head_size: int | None = None):
        super().__init__()
        self.q, self.k, self.v = q, k, v
        self.head_size = head_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.head_size is None:
            return torch.cat([q, k, v], dim=-1)
        split = (*q.shape[:-1], -1, self.head_size)
        return torch.cat([q.view(split), k.view(split), v.view(split)], dim=-1).flatten(-2)


class _BridgeNorm(nn.Module):
    """A LayerNorm computed the way TransformerLens' ``NormalizationBridge`` computes it when it does not
    defer to the HF module (float32, centre, divide by sqrt(mean square + eps), weight, bias), so the
    plain path gives the hooked path's numbers exactly (``torch.layer_norm`` differs at rounding level)."""

    def __init__(self, norm: nn.Module, bridge: nn.Module):
        super().__init__()
        self.norm = norm  # the HF module: its weight and bias are read at call time
        cfg = bridge.config
        self.rms = bool(bridge.uses_rms_norm)
        self.eps = getattr(cfg, "eps", 1e-05)
        self.offset = bool(getattr(cfg, "rmsnorm_uses_offset", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float() if dtype not in (torch.float32, torch.float64) else x
        if not self.rms:
            h = h - h.mean(-1, keepdim=True)
        h = h / (h.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        h = h * ((1.0 + self.norm.weight) if self.offset else self.norm.weight)
        bias = getattr(self.norm, "bias", None)
        if not self.rms and bias is not None:
            h = h + bias
        h = h.to(dtype)
        return h.contiguous() if not self.rms and not h.is_contiguous() else h


class _KwargFilter(nn.Module):
    """A replacement block called the way ``BlockBridge`` calls it: keyword arguments its ``forward``
    does not accept are dropped (the HF decoder loop passes many a simple module does not take)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        params = inspect.signature(inner.forward).parameters.values()
        self._any = any(p.kind is p.VAR_KEYWORD for p in params)
        self._names = {p.name for p in params}

    def forward(self, *args, **kwargs):
        if not self._any:
            kwargs = {k: v for k, v in kwargs.items() if k in self._names}
        return self.inner(*args, **kwargs)


class PlainView:
    """A hook-free module tree mirroring ``hf`` (see the module docstring); ``module`` is the HF model to call.

    ``check()`` keeps it in sync (cheap: identity comparisons) and says whether it can be used now.
    """

    def __init__(self, hf: nn.Module, bridge: nn.Module, verify: Callable[[nn.Module], str | None] | None = None):
        self.hf = hf
        self.bridge = bridge
        self._verify = verify
        self.module: nn.Module | None = None
        self.reason: str | None = "not built yet"
        #: layer indices whose attention is plain causal softmax attention (no sliding window, logit
        #: soft-capping or sink logits): there cache layers may compute the attention themselves
        self.simple_layers: set[int] = set()
        self._epoch = -1  # _WatchedDict.epoch when built
        self._hooked_only: list[nn.Module] = []  # modules the hooked path runs and the plain view does not
        self._hook_counter = -1  # RemovableHandle.next_id when no hook was last found
        self.builds = 0

    # ------------------------------------------------------------------ building
    def _plain(self, mod: nn.Module, memo: dict, original_of_block: bool = False) -> nn.Module:
        key = id(mod)
        if key in memo:
            return memo[key]
        if _is_bridge(mod):
            _watch(mod)
            orig = mod._modules.get("_original_component")
            if orig is None:
                raise PlainViewError(f"bridge component {type(mod).__name__} wraps no HF module")
            if all(n in mod._modules for n in ("q", "k", "v", "qkv")):  # fused QKV, split by the bridge
                out = self._fused_qkv(mod, orig, memo)
            elif _python_norm(mod):
                out = _BridgeNorm(orig, mod)
            else:
                out = self._plain(orig, memo)
                if type(mod).__name__ == "BlockBridge" and not _is_stock_block(out):
                    out = _KwargFilter(out)
            if _is_attention_bridge(mod):
                out = self._with_workbench_attention(out, orig, memo)
            memo[key] = out
            return out
        children = mod._modules
        plain_children = {n: (None if c is None else self._plain(c, memo)) for n, c in children.items()}
        if all(plain_children[n] is c for n, c in children.items()):
            memo[key] = mod  # nothing bridged below: share the module itself
            return mod
        _watch(mod)
        new = _shallow_copy(mod)  # parameters, buffers, hooks and config are shared
        new.__dict__["_modules"] = plain_children
        memo[key] = new
        return new

    def _with_workbench_attention(self, plain: nn.Module, orig: nn.Module, memo: dict) -> nn.Module:
        """A HF attention module running eager attention is given a copy of its config naming the
        ``workbench`` attention function (``workbench.fast_attention``), so cache layers with their own
        attention are read in place; the original module and config are never touched."""
        cfg = getattr(plain, "config", None)
        if getattr(cfg, "_attn_implementation", None) != "eager" or getattr(plain, "layer_idx", None) is None:
            return plain
        if _plain_softmax_attention(plain):
            self.simple_layers.add(int(plain.layer_idx))
        if plain is orig:
            plain = _shallow_copy(orig)
        key = ("config", id(cfg))
        if key not in memo:
            new_cfg = copy.copy(cfg)
            new_cfg.__dict__["_attn_implementation_internal"] = fast_attention.NAME
            memo[key] = new_cfg
        plain.__dict__["config"] = memo[key]
        return plain

    def _fused_qkv(self, bridge: nn.Module, orig: nn.Module, memo: dict) -> nn.Module:
        if hasattr(orig, "c_attn"):  # GPT-2
            name, head_size = "c_attn", None
        elif hasattr(orig, "query_key_value") and hasattr(orig, "head_size"):  # GPT-NeoX
            name, head_size = "query_key_value", int(orig.head_size)
        else:
            raise PlainViewError(f"fused QKV attention {type(orig).__name__} has no known fused layout")
        q, k, v = (self._plain(bridge._modules[n], memo) for n in ("q", "k", "v"))
        plain_orig = self._plain(orig, memo)
        if plain_orig is orig:  # make sure the fused linear is replaced in a copy, never in the shared original
            plain_orig = _shallow_copy(orig)
        plain_orig._modules[name] = _SplitQKV(q, k, v, head_size)
        return plain_orig

    def build(self, rebuilt: bool = False) -> None:
        self.module, self.builds = None, self.builds + 1
        self.simple_layers = set()
        cfg = getattr(self.bridge, "cfg", None)
        flags = [f for f in _COMPUTE_FLAGS if getattr(cfg, f, False)]
        if flags or getattr(self.bridge, "compatibility_mode", False):
            self.reason = f"TransformerLens computes differently with {', '.join(flags) or 'compatibility mode'} on"
            return
        fast_attention.register()
        memo: dict = {}
        try:
            module = self._plain(self.hf, memo)
        except PlainViewError as exc:
            self.reason = str(exc)
            self._epoch = _WatchedDict.epoch
            return
        plain_ids = {id(m) for m in module.modules()}
        seen, hooked_only = set(), []
        for m in list(self.hf.modules()) + list(self.bridge.modules()):
            if id(m) not in plain_ids and id(m) not in seen:
                seen.add(id(m))
                hooked_only.append(m)
        hooked_only.sort(key=lambda m: type(m).__name__ != "HookPoint")  # where hooks usually sit, first
        self._hooked_only = hooked_only
        self._hook_counter = -1
        self._epoch = _WatchedDict.epoch
        self.module, self.reason = module, None
        if self._verify is not None:
            problem = self._verify(module)
            if problem is not None:
                self.module, self.reason = None, problem
            elif self._epoch != _WatchedDict.epoch and not rebuilt:  # the probe itself changed the tree
                self.build(rebuilt=True)

    def stale(self) -> bool:
        """Whether a child module changed since the build (a replaced linear, block, embedding, ...)."""
        return self._epoch != _WatchedDict.epoch

    # ------------------------------------------------------------------ using
    def hooks_attached(self) -> bool:
        """Whether any module that only the hooked path runs carries a hook (workbench or TransformerLens).

        Cheap when nothing changed: torch numbers every hook handle it creates, so if no handle was
        created since the last scan that found none, there is still none."""
        counter = RemovableHandle.next_id
        if counter == self._hook_counter:
            return False
        if any(_has_user_hook(m) for m in self._hooked_only):
            return True
        self._hook_counter = counter
        return False

    def check(self) -> str | None:
        """None when the plain view can run the next forward, else why not (rebuilds it when stale).

        A rebuild (which runs the exactness probe through the hooked path) only happens while no hook
        is attached anywhere in the bridge, so a probe never fires anybody's hook."""
        if self.builds == 0 or self.stale():
            if self._any_bridge_hook():
                return "hooks are attached"
            self.build()
        if self.module is None:
            return self.reason
        if self.hooks_attached():
            return "hooks are attached"
        return None

    def _any_bridge_hook(self) -> bool:
        return any((_is_bridge(m) or type(m).__name__ == "HookPoint") and _has_user_hook(m)
                   for m in list(self.hf.modules()) + list(self.bridge.modules()))


def _has_user_hook(m: nn.Module) -> bool:
    """Whether ``m`` carries a hook someone attached (any hook on a HookPoint; on a bridge component, any
    hook but the bridge's own internal wiring, e.g. ``BlockBridge``'s pre-hooks that feed its split
    attention inputs, which exist only for the hooked computation)."""
    dicts = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
    if not any(dicts):
        return False
    if type(m).__name__ == "HookPoint":
        return True
    return any(not getattr(fn, "__module__", "").startswith("transformer_lens.model_bridge")
               for d in dicts for fn in d.values())


def _shallow_copy(mod: nn.Module) -> nn.Module:
    """A new module object of the same class sharing every attribute but the ``_modules`` dict (copied)."""
    new = mod.__class__.__new__(mod.__class__)
    new.__dict__.update(mod.__dict__)
    new.__dict__["_modules"] = dict(mod._modules)
    return new


def _plain_softmax_attention(module: nn.Module) -> bool:
    """Whether a HF attention module computes plain causal softmax(q k^T * scaling) v over all its keys."""
    cfg = getattr(module, "config", None)
    if getattr(module, "sliding_window", None) or getattr(module, "is_sliding", False):
        return False
    if getattr(module, "attn_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
        return False
    if getattr(module, "sinks", None) is not None or getattr(module, "is_causal", True) is False:
        return False
    return True


def _python_norm(bridge: nn.Module) -> bool:
    """Whether a normalization bridge computes the norm itself (instead of calling the HF module)."""
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    if not isinstance(bridge, NormalizationBridge) or getattr(bridge, "use_native_layernorm_autograd", True):
        return False
    return not getattr(bridge.config, "layer_norm_folding", False)


def _is_attention_bridge(module: nn.Module) -> bool:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return isinstance(module, AttentionBridge)


def _is_stock_block(module: nn.Module) -> bool:
    """Whether ``module`` is a HF decoder layer (accepts the decoder loop's keyword arguments)."""
    return type(module).__module__.startswith("transformers.")
