"""Editing weights and components of a model for a while, with an exact restore.

``with model.edit_weights() as ed:`` yields a ``WeightEditor``; every change made through it is
undone when the block ends, in reverse order, also when the block raises or is interrupted. A
restore is bit-exact: parameters are edited by swapping the tensor a ``Parameter`` holds (the
original tensor is never written), and replaced modules are put back as the same objects.

What can be edited (layer-wise linears are addressed by ``kind``, see ``Model.linear_kinds``):

    set_linear(layer, kind, weight=(out, in), bias=(out,))   new values, same shapes
    replace_linear(layer, kind, module)   any nn.Module mapping (..., in) -> (..., out) (an int8 or
        low-rank linear, a sparse GEMV...); give it ``weight`` (out, in) and ``bias`` attributes holding
        the effective weights so analyses (``Model.weights()``) keep working
    set_norm(layer, which, weight, bias=None)   which: "ln1" | "ln2"; layer=None for the final norm
    set_embedding(W_E (V, d)), set_unembedding(W_U (d, V))   untie tied embeddings for the block
    replace_unembedding(module)   any nn.Module mapping (..., d) -> (..., V) in place of the output
        projection (an int8 lm_head); a tied embedding keeps the shared weight. Give it ``weight`` (V, d)
        and ``bias`` attributes for analyses, as for replace_linear
    replace_component(layer, part, module)   part: "block" | "attn" | "mlp": the HF module the
        layer's wrapper calls (skip a block, swap an attention implementation); the module must
        accept and return what the original does. Hooks inside the replaced component cannot fire:
        asking for one raises a ``HookError`` naming the edit (``silenced_hooks(model)`` lists them)

``WeightEdit`` is the ``Intervention`` base for methods that edit weights: implement
``edit(model, editor)``, and the edit holds inside ``model.intervene(...)`` or for one call.

``note=`` (set_linear, replace_linear, replace_unembedding) replaces the default description recorded
for ``Model.active_edits()``, so a method can mark what it did (e.g. "quantized by rtn(bits=4, ...)") and
another can refuse to stack on it.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from torch import nn

from .errors import InputError
from .intervention import Intervention

if TYPE_CHECKING:
    from .model import Model

# kind -> (bridge part, bridge child) for layer-wise linears; HF Llama names in comments
LINEAR_KINDS: dict[str, tuple[str, str]] = {
    "q": ("attn", "q"),        # q_proj
    "k": ("attn", "k"),        # k_proj
    "v": ("attn", "v"),        # v_proj
    "o": ("attn", "o"),        # o_proj
    "gate": ("mlp", "gate"),   # gate_proj
    "up": ("mlp", "in"),       # up_proj
    "down": ("mlp", "out"),    # down_proj
}
PARTS = ("block", "attn", "mlp")


#: attribute set on a HookPoint that cannot fire because the component around it is replaced
SILENCED_ATTR = "_workbench_silenced"


def _is_hook_point(m: nn.Module) -> bool:
    return type(m).__name__ == "HookPoint"


def silenced_hooks(model: "Model") -> dict[str, str]:
    """{full hook name: why it cannot fire} for every hook inside a component replaced right now
    (``replace_component``): a skipped block's attention and MLP hooks, a dropped attention's q/k/v/pattern..."""
    return {n: p.__dict__[SILENCED_ATTR] for n, p in model._points.items() if SILENCED_ATTR in p.__dict__}


class ComponentShim(nn.Module):
    """Runs a replacement ``module`` in the slot of a bridge component that re-implements its own forward
    (attention), firing that component's input and output hook points around it.

    The hook points stay owned by the bridge (kept out of this module's children); ``module`` is a child,
    so its parameters count as the model's."""

    def __init__(self, module: nn.Module, hook_in: nn.Module | None, hook_out: nn.Module | None):
        super().__init__()
        self.module = module
        object.__setattr__(self, "_hook_in", hook_in)
        object.__setattr__(self, "_hook_out", hook_out)

    def forward(self, *args, **kwargs):
        if self._hook_in is not None:
            if args and isinstance(args[0], torch.Tensor):
                args = (self._hook_in(args[0]),) + args[1:]
            elif isinstance(kwargs.get("hidden_states"), torch.Tensor):
                kwargs["hidden_states"] = self._hook_in(kwargs["hidden_states"])
        out = self.module(*args, **kwargs)
        if self._hook_out is None:
            return out
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            return (self._hook_out(out[0]),) + tuple(out[1:])
        return self._hook_out(out) if isinstance(out, torch.Tensor) else out

    def extra_repr(self) -> str:
        return f"runs {type(self.module).__name__} with the bridge's input/output hooks"


def original(component: nn.Module) -> nn.Module:
    """The HF module a TransformerBridge component wraps (the component itself when it wraps nothing)."""
    return component._modules.get("_original_component", None) or component


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out), the transpose of nn.Linear's (out, in)."""
    return type(module).__name__ == "Conv1D"


def _bump_structure(model) -> None:
    """Count a change of which module/Parameter sits where (made by an editor, or undone)."""
    model.__dict__["_edit_structure_version"] = model.__dict__.get("_edit_structure_version", 0) + 1


def _is_shared(model, p: torch.Tensor) -> bool:
    """``model.is_shared_parameter(p)`` from one pass over the modules, cached until an editor next changes which
    module holds which Parameter (one pass costs tens of ms on SmolLM2; a rotation makes hundreds of edits)."""
    version = model.__dict__.get("_edit_structure_version", 0)
    cache = model.__dict__.get("_shared_parameter_cache")
    if cache is None or cache[0] != version:
        counts: dict[int, int] = {}
        for m in model.hf.modules():
            for q in m._parameters.values():
                if q is not None:
                    counts[id(q)] = counts.get(id(q), 0) + 1
        cache = (version, {i for i, c in counts.items() if c > 1})
        model.__dict__["_shared_parameter_cache"] = cache
    return id(p) in cache[1]


class WeightEditor:
    """Changes to one model's weights and components, undone by ``close()`` (see the module docstring)."""

    def __init__(self, model: "Model", label: str = ""):
        self.model = model
        self.label = label
        self._undo: list[Callable[[], None]] = []
        self._redo: list[Callable[[], None]] = []  # the same edits, to re-apply after a suspension
        self._records: list[tuple[str, str]] = []
        self._suspended = 0
        self.closed = False

    # ------------------------------------------------------------------ low level
    def _set_attr(self, owner: nn.Module, name: str, value) -> None:
        old = owner._parameters.get(name) if name in owner._parameters else owner._modules.get(name)
        if old is None and not hasattr(owner, name):
            raise InputError(f"{type(owner).__name__} has no attribute {name!r} to edit.")
        if old is None:
            old = getattr(owner, name)
        setattr(owner, name, value)
        _bump_structure(self.model)
        self._undo.append(lambda: (setattr(owner, name, old), _bump_structure(self.model)))
        self._redo.append(lambda: (setattr(owner, name, value), _bump_structure(self.model)))

    def _swap_tensor(self, owner: nn.Module, name: str, new: torch.Tensor, what: str) -> None:
        """Give ``owner.<name>`` (a Parameter) the values ``new``; tied parameters are untied first."""
        self._check_open()
        p = getattr(owner, name, None)
        if not isinstance(p, torch.Tensor):
            raise InputError(f"{what}: this model has no such parameter to edit.")
        new = torch.as_tensor(new)
        if tuple(new.shape) != tuple(p.shape):
            raise InputError(f"{what}: expected shape {tuple(p.shape)}, got {tuple(new.shape)}. Weight edits keep "
                             "shapes; to change a shape, replace the module (replace_linear/replace_component).")
        if not torch.isfinite(new).all():
            raise InputError(f"{what}: the new values contain NaN or inf.")
        new = new.detach().to(device=p.device, dtype=p.dtype).contiguous()
        if _is_shared(self.model, p):
            # untie: only this module gets the new Parameter; the shared one stays with the others
            self._set_attr(owner, name, nn.Parameter(new, requires_grad=p.requires_grad))
        else:
            old = p.data
            p.data = new
            self._undo.append(lambda: setattr(p, "data", old))
            self._redo.append(lambda: setattr(p, "data", new))

    def _record(self, target: str, how: str) -> None:
        self._records.append((target, how))

    def _check_open(self) -> None:
        if self.closed:
            raise InputError("This WeightEditor is closed: edit weights inside the `with model.edit_weights()` block.")

    # ------------------------------------------------------------------ linears
    def set_linear(self, layer: int, kind: str, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, note: str | None = None) -> None:
        """New values for one linear: weight (out, in) as in ``nn.Linear``, bias (out,); ``note``: what to
        record in ``Model.active_edits()`` (default "weights edited")."""
        mod = self.model.linear_module(layer, kind)
        what = f"set_linear(layer={layer}, kind={kind!r})"
        if weight is None and bias is None:
            raise InputError(f"{what}: give weight= and/or bias=.")
        if weight is not None:
            w = torch.as_tensor(weight)
            self._swap_tensor(mod, "weight", w.t() if is_conv1d(mod) and w.ndim == 2 else w, what)
        if bias is not None:
            if getattr(mod, "bias", None) is None:
                raise InputError(f"{what}: this linear has no bias.")
            self._swap_tensor(mod, "bias", bias, what)
        self._record(f"L{layer}.{kind}", note or "weights edited")

    def replace_linear(self, layer: int, kind: str, module: nn.Module, note: str | None = None) -> None:
        """Run ``module`` instead of the layer's ``kind`` linear (hooks on it keep firing); ``note``: what to
        record in ``Model.active_edits()`` (default "replaced by <class name>")."""
        self._check_open()
        if not isinstance(module, nn.Module):
            raise InputError(f"replace_linear(): module must be a torch nn.Module, got {type(module).__name__}.")
        self.model.check_layer(layer)
        wrapper = self.model.linear_wrapper(layer, kind)
        self._set_attr(wrapper, "_original_component", module)
        self._record(f"L{layer}.{kind}", note or f"replaced by {type(module).__name__}")

    # ------------------------------------------------------------------ norms, embeddings
    def set_norm(self, layer: int | None, which: str = "ln1", weight: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> None:
        """New gain (d,) and/or bias (d,) of a norm: ``which`` "ln1"/"ln2" (or "ln1_post"/"ln2_post" on models with
        post norms, e.g. Gemma) of ``layer``, or layer=None for the final norm. The gain is the stored weight
        (Gemma's norms multiply by 1 + weight)."""
        mod = self.model.norm_module(layer, which)
        what = f"set_norm(layer={layer}, which={which!r})"
        if weight is not None:
            self._swap_tensor(mod, "weight", weight, what)
        if bias is not None:
            self._swap_tensor(mod, "bias", bias, what)
        self._record("final_norm" if layer is None else f"L{layer}.{which}", "norm edited")

    def set_embedding(self, W_E: torch.Tensor) -> None:
        """New token embedding (V, d); a tied unembedding keeps its old values (the two are untied)."""
        self._swap_tensor(self.model.embedding_module(), "weight", W_E, "set_embedding()")
        self._record("embed", "edited")

    def set_unembedding(self, W_U: torch.Tensor) -> None:
        """New unembedding in TransformerLens layout (d, V); a tied embedding keeps its old values."""
        mod = self.model.unembedding_module()
        w = torch.as_tensor(W_U)
        self._swap_tensor(mod, "weight", w.t() if w.ndim == 2 else w, "set_unembedding()")
        self._record("unembed", "edited")

    def replace_unembedding(self, module: nn.Module, note: str | None = None) -> None:
        """Run ``module`` (mapping (..., d) -> (..., V) logits) in place of the output projection; the hooks
        around it keep firing. A tied embedding keeps the shared weight (the two are untied for the block)."""
        self._check_open()
        if not isinstance(module, nn.Module):
            raise InputError(f"replace_unembedding(): module must be a torch nn.Module, got {type(module).__name__}.")
        self._set_attr(self.model.bridge.unembed, "_original_component", module)
        self._record("unembed", note or f"replaced by {type(module).__name__}")

    # ------------------------------------------------------------------ components
    def replace_component(self, layer: int, part: str, module: nn.Module) -> None:
        """Run ``module`` in place of the HF ``part`` ("block", "attn" or "mlp") of ``layer``; its wrapper's
        hooks (resid_pre/resid_post for a block, attn_out/mlp_out...) keep firing, hooks inside it do not
        (they are marked silenced: a capture or hook asking for one fails with a message naming this edit).

        ``module`` is called exactly as the HF module it replaces: a Llama block gets
        ``(hidden_states, attention_mask=, position_ids=, past_key_values=, use_cache=, position_embeddings=)``
        and returns the new hidden states (B, T, d); an attention gets ``hidden_states`` and the same keywords
        and returns ``(output (B, T, d), weights or None)``; an MLP gets ``x`` and returns (B, T, d)."""
        self._check_open()
        if part not in PARTS:
            raise InputError(f"replace_component(): part must be one of {PARTS}, got {part!r}.")
        if not isinstance(module, nn.Module):
            raise InputError(f"replace_component(): module must be a torch nn.Module, got {type(module).__name__}.")
        _ = self.model.linear_kinds  # computed (and cached) from the intact block before anything is replaced
        wrapper = self.model.component_wrapper(layer, part)
        target = f"L{layer}.{part}"
        what = f"replaced by {type(module).__name__}"
        if part == "attn":
            # The TransformerBridge re-implements attention from its own q/k/v/o wrappers and never calls
            # the HF attention module, so swapping that module would change nothing: the wrapper itself is
            # swapped in its parent (the HF block) for a shim that fires its input/output hooks.
            parent = original(self.model.component_wrapper(layer, "block"))
            slot = next((k for k, v in parent._modules.items() if v is wrapper), None)
            if slot is None:
                raise InputError(f"replace_component(): cannot find the attention of layer {layer} in its block.")
            keep = {id(wrapper._modules.get("hook_in")), id(wrapper._modules.get("hook_out"))}
            self._silence([m for m in wrapper.modules() if _is_hook_point(m) and id(m) not in keep], target, what)
            self._set_attr(parent, slot, ComponentShim(module, wrapper._modules.get("hook_in"),
                                                       wrapper._modules.get("hook_out")))
        else:
            self._silence([m for m in original(wrapper).modules() if _is_hook_point(m)], target, what)
            self._set_attr(wrapper, "_original_component", module)
        self._record(target, what)

    def _silence(self, points: list[nn.Module], target: str, what: str) -> None:
        """Mark hook points that cannot fire while this edit holds (``HookSession`` refuses them)."""
        reason = f"{target} is {what}"
        for p in points:
            old = p.__dict__.get(SILENCED_ATTR)
            set_to = functools.partial(p.__dict__.__setitem__, SILENCED_ATTR, reason)
            undo = ((lambda p=p: p.__dict__.pop(SILENCED_ATTR, None)) if old is None
                    else (lambda p=p, old=old: p.__dict__.__setitem__(SILENCED_ATTR, old)))
            set_to()
            self._undo.append(undo)
            self._redo.append(set_to)

    # ------------------------------------------------------------------ lifecycle
    @property
    def records(self) -> list[tuple[str, str]]:
        """(target, what was done) of every edit made so far and in force: none while ``suspended()``."""
        return [] if self._suspended else list(self._records)

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """The original weights for the duration of the block (a clean reference pass), then the edits again."""
        self._check_open()
        for fn in reversed(self._undo):
            fn()
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1
            for fn in self._redo:
                fn()

    def close(self) -> None:
        """Undo every edit, last first; every undo runs even if one fails (the first failure is re-raised)."""
        err = None
        self._redo.clear()
        while self._undo:
            fn = self._undo.pop()
            try:
                fn()
            except BaseException as exc:  # keep restoring the rest
                err = err or exc
        self.closed = True
        if err is not None:
            raise err


@contextmanager
def editing(model: "Model", label: str = "") -> Iterator[WeightEditor]:
    ed = WeightEditor(model, label)
    model._editors.append(ed)
    try:
        yield ed
    finally:
        model._editors.remove(ed)
        ed.close()


class WeightEdit(Intervention):
    """Base of interventions that edit weights or components: implement ``edit(model, editor)``.

    The edit is made when the intervention is applied (``model.intervene(...)`` or one call's
    ``interventions=``) and undone exactly when that ends.
    """

    def edit(self, model: "Model", editor: WeightEditor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement edit(model, editor).")

    @contextmanager
    def applied(self, model: "Model") -> Iterator[None]:
        with model.edit_weights(label=self.describe()) as ed:
            self.edit(model, ed)
            yield
