"""Hook and intervention lifecycle under faults: nothing outlives a public call.

Faults (a ``RuntimeError`` and a ``KeyboardInterrupt``, raised from inside a hook, from a cache
policy, from a with-block body) are injected into every public entry point: ``Model.run``,
``Model.intervene``, ``interventions.compare``, ``Model.generate`` (with and without the KV
cache) and ``Model.prefill``. After each, the exception must have propagated unchanged and the
model must be exactly as before: no workbench hook left (nor any other new hook), nothing
active, no edited weight, no TransformerLens stop flag, and bit-identical logits and generations.

Also: hooks that never fire, hooks the user attached (ours must never remove or report them),
nested ``intervene`` blocks, and the exact moment an intervention's effect ends.
"""
from contextlib import contextmanager

import pytest
import torch

import workbench as wb
from interventions import HeadAblation, MLPAblation, compare
from workbench.kv_cache import PolicyBase
from workbench.errors import HookError, InputError
from workbench.hooks import HookSession

PROMPT = "The capital of France is"
PROMPTS = [PROMPT, "abc"]


# ---------------------------------------------------------------------------------- helpers
class Injected(RuntimeError):
    pass


def _exc(kind: str) -> BaseException:
    return Injected("injected fault") if kind == "error" else KeyboardInterrupt()


def _exc_type(kind: str):
    return Injected if kind == "error" else KeyboardInterrupt


class Raiser(wb.Intervention):
    """Raises ``exc`` from its hook on ``blocks.{layer}.hook_resid_post`` at the ``on_call``-th call.

    With ``edit_weights``, its ``applied`` also zeroes an MLP weight for the duration (restoring
    it in ``finally``), so a fault must also unwind a state edit.
    """

    def __init__(self, exc: BaseException, on_call: int = 1, layer: int = 0, edit_weights: bool = False):
        self.exc, self.on_call, self.layer, self.edit_weights = exc, on_call, layer, edit_weights
        self.calls = 0

    def hooks(self, model):
        def fn(x, _name):
            self.calls += 1
            if self.calls >= self.on_call:
                raise self.exc
            return None

        return [(f"blocks.{self.layer}.hook_resid_post", fn)]

    @contextmanager
    def applied(self, model):
        if not self.edit_weights:
            yield
            return
        w = _mlp_weight(model)
        saved = w.detach().clone()
        with torch.no_grad():
            w.zero_()
        try:
            yield
        finally:
            with torch.no_grad():
                w.copy_(saved)


class Affine(wb.Intervention):
    """x -> scale * x + shift on one hook: two of these on one point do not commute."""

    def __init__(self, scale=1.0, shift=0.0, hook="blocks.0.hook_resid_post"):
        self.scale, self.shift, self.hook = scale, shift, hook

    def hooks(self, model):
        return [(self.hook, lambda x, _n: x * self.scale + self.shift)]

    def __repr__(self):
        return f"Affine({self.scale}, {self.shift})"


def _zero_mlp() -> Raiser:
    """An intervention that only edits state: zeroes an MLP weight while applied (its hook never raises)."""
    return Raiser(Injected("never raised"), on_call=10**9, edit_weights=True)


def _mlp_weight(model) -> torch.nn.Parameter:
    return next(p for n, p in model.hf.named_parameters() if "mlp" in n and p.ndim == 2)


def _all_modules(model):
    seen = {}
    for m in list(model.bridge.modules()) + list(model.hf.modules()):
        seen[id(m)] = m
    return list(seen.values())


def _hook_count(model) -> int:
    """Every forward/pre hook on every module, ours or not (catches unflagged leaks too)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in _all_modules(model))


_SNAPSHOTS: dict = {}


def _snapshot(model):
    """The clean model's outputs, taken once per model (every test must leave it unchanged)."""
    if id(model) not in _SNAPSHOTS:
        _SNAPSHOTS[id(model)] = _take_snapshot(model)
    snap = dict(_SNAPSHOTS[id(model)])
    snap["hooks"] = _hook_count(model)  # user or transformers hooks may differ between tests
    return snap


def _take_snapshot(model):
    with torch.no_grad():
        logits = model.run(PROMPTS).logits.clone()
    gen = model.generate(PROMPT, 3, stop_at_eos=False)
    weight = _mlp_weight(model).detach().clone()
    return {"logits": logits, "tokens": gen.new_tokens.tolist(), "gen_logits": gen.logits, "weight": weight,
            "hooks": _hook_count(model)}


def _assert_clean(model, before) -> None:
    """The model is exactly as in ``before``: no hooks, nothing active, same weights and outputs."""
    assert model.leftover_hooks() == []
    assert _hook_count(model) == before["hooks"], "a hook (ours or not) was left on the model"
    assert model._active == []
    assert all(getattr(b, "_stop_at_layer_idx", None) is None for b in model.bridge.blocks)
    assert torch.equal(_mlp_weight(model).detach(), before["weight"]), "an edited weight was not restored"
    assert torch.equal(model.run(PROMPTS).logits, before["logits"])
    gen = model.generate(PROMPT, 3, stop_at_eos=False)
    assert gen.new_tokens.tolist() == before["tokens"] and torch.equal(gen.logits, before["gen_logits"])


# Each entry point, given an intervention, runs one public call with it (per call or via intervene).
ENTRY_POINTS = {
    "run": lambda m, iv: m.run(PROMPTS, capture=["resid_post", "pattern"], interventions=[iv]),
    "run_summary": lambda m, iv: m.run(PROMPTS, capture=["pattern"], attention="summary", interventions=[iv]),
    "run_stop_at_layer": lambda m, iv: m.run(PROMPTS, capture=["resid_post"], layers=[0], stop_at_layer=1,
                                             interventions=[iv]),
    "run_in_intervene": lambda m, iv: _in_intervene(m, iv, lambda: m.run(PROMPTS)),
    "compare": lambda m, iv: compare(m, PROMPTS, iv),
    "generate_cached": lambda m, iv: m.generate(PROMPT, 5, interventions=[iv], stop_at_eos=False),
    "generate_uncached": lambda m, iv: m.generate(PROMPT, 5, interventions=[iv], use_cache=False,
                                                  stop_at_eos=False),
    "generate_list": lambda m, iv: m.generate(PROMPTS, 3, interventions=[iv], stop_at_eos=False),
    "generate_in_intervene": lambda m, iv: _in_intervene(m, iv, lambda: m.generate(PROMPT, 5, stop_at_eos=False)),
    "prefill": lambda m, iv: m.prefill(PROMPT, interventions=[iv]),
    "prefill_in_intervene": lambda m, iv: _in_intervene(m, iv, lambda: m.prefill(PROMPT)),
}


def _in_intervene(model, iv, call):
    with model.intervene(iv):
        assert model._active and model._active[-1].parts == [iv]
        return call()


# (entry, on_call): every entry point fails on the hook's first call; generation also mid-way,
# with a partly filled KV cache (a single forward never reaches a third call).
FAULT_CASES = [(e, 1) for e in ENTRY_POINTS] + [(e, 3) for e in ENTRY_POINTS if e.startswith("generate")]


# ---------------------------------------------------------------------------------- fault injection
@pytest.mark.parametrize("kind", ["error", "interrupt"])
@pytest.mark.parametrize("entry, on_call", FAULT_CASES, ids=[f"{e}-call{n}" for e, n in FAULT_CASES])
def test_fault_in_hook(tiny, entry, on_call, kind):
    """A hook raising (at once, or mid-generation) propagates unchanged and leaves the model as before.

    The intervention also zeroes a weight while applied, so the fault must unwind a state edit too.
    """
    before = _snapshot(tiny)
    iv = Raiser(_exc(kind), on_call=on_call, edit_weights=True)
    with pytest.raises(_exc_type(kind)) as ei:
        ENTRY_POINTS[entry](tiny, iv)
    assert ei.value is iv.exc  # the very exception, not wrapped nor masked by a "hook never fired"
    assert iv.calls == on_call
    _assert_clean(tiny, before)


@pytest.mark.parametrize("kind", ["error", "interrupt"])
def test_fault_in_intervene_body(tiny, kind):
    """An exception inside ``with model.intervene(...)`` unwinds the block: nothing stays active or edited."""
    before = _snapshot(tiny)
    iv = _zero_mlp()
    with pytest.raises(_exc_type(kind)):
        with tiny.intervene(iv, Affine(2.0)):
            inside = tiny.run(PROMPTS).logits
            assert not torch.equal(inside, before["logits"])
            assert not torch.equal(_mlp_weight(tiny).detach(), before["weight"])
            raise _exc(kind)
    _assert_clean(tiny, before)


class _FailingPolicy(PolicyBase):
    """A cache policy whose ``apply`` (or ``observe_attention``) raises at a given step."""

    name = "failing"

    def __init__(self, exc, at_step=0, where="apply"):
        self.exc, self.at_step, self.where = exc, at_step, where
        self.steps = []

    def apply(self, cache, ctx):
        self.steps.append(ctx.step)
        if self.where == "apply" and ctx.step >= self.at_step:
            raise self.exc
        cache.keep(0, torch.arange(cache.seq_len(0)))  # a real (no-op) edit of the cache

    def observe_attention(self, layer, pattern):
        if self.where == "observe" and len(self.steps) >= self.at_step:
            raise self.exc


@pytest.mark.parametrize("where", ["apply", "observe"])
@pytest.mark.parametrize("at_step", [0, 2])
@pytest.mark.parametrize("kind", ["error", "interrupt"])
def test_fault_in_cache_policy(tiny, kind, at_step, where):
    """A policy raising in ``apply`` (after the forward) or in ``observe_attention`` (inside a hook)."""
    before = _snapshot(tiny)
    policy = _FailingPolicy(_exc(kind), at_step, where)
    with pytest.raises(_exc_type(kind)) as ei:
        tiny.generate(PROMPT, 5, cache_policy=policy, stop_at_eos=False)
    assert ei.value is policy.exc
    _assert_clean(tiny, before)
    if at_step == 0:
        policy = _FailingPolicy(_exc(kind), 0, where)
        with pytest.raises(_exc_type(kind)):
            tiny.prefill(PROMPT, cache_policy=policy)
        _assert_clean(tiny, before)
    with pytest.raises(_exc_type(kind)):  # the same inside an intervene block
        with tiny.intervene(Affine(0.5)):
            tiny.generate(PROMPT, 5, cache_policy=_FailingPolicy(_exc(kind), at_step, where), stop_at_eos=False)
    _assert_clean(tiny, before)


@pytest.mark.parametrize("kind", ["error", "interrupt"])
def test_fault_in_on_step(tiny_llama, kind):
    """The user's on_step callback raising mid-generation unwinds like a hook fault."""
    before = _snapshot(tiny_llama)
    exc = _exc(kind)

    def on_step(cache, ctx):
        if ctx.step == 1:
            raise exc

    with pytest.raises(_exc_type(kind)):
        tiny_llama.generate(PROMPT, 5, on_step=on_step, interventions=[Affine(1.5)])
    _assert_clean(tiny_llama, before)


class _BadApplied(wb.Intervention):
    """An intervention whose state edit fails on entry (before any hook could be attached)."""

    def hooks(self, model):
        return [("blocks.0.hook_resid_post", lambda x, _n: x * 0)]

    @contextmanager
    def applied(self, model):
        raise Injected("applied failed")
        yield  # pragma: no cover


@pytest.mark.parametrize("entry", ["run", "compare", "generate_cached", "prefill", "run_in_intervene"])
def test_fault_entering_applied(tiny_llama, entry):
    """An intervention whose ``applied`` fails on entry leaves no hook and nothing active."""
    before = _snapshot(tiny_llama)
    with pytest.raises(Injected, match="applied failed"):
        ENTRY_POINTS[entry](tiny_llama, _BadApplied())
    _assert_clean(tiny_llama, before)


def test_failed_reference_mean_restores_active(tiny_llama):
    """A mean ablation whose clean reference run fails must put the active interventions back."""
    a = Affine(2.0)
    expected = tiny_llama.run(PROMPTS, interventions=[a]).logits
    bad = MLPAblation(0, mode="mean", mean_over=["x" * 300])  # longer than the 256-token context
    with tiny_llama.intervene(a):
        with pytest.raises(InputError, match="context of 256"):
            tiny_llama.run(PROMPTS, interventions=[bad])
        assert len(tiny_llama._active) == 1 and tiny_llama._active[0].parts == [a]
        assert torch.equal(tiny_llama.run(PROMPTS).logits, expected)
    assert tiny_llama._active == []


# ---------------------------------------------------------------------------------- hooks that never fire
def test_capture_past_stop_at_layer_is_refused_before_running(tiny_llama):
    """A layer-1 capture with stop_at_layer=1 is an InputError at plan time: no forward pass runs."""
    calls = []
    handle = tiny_llama.bridge.hook_dict["hook_embed"].register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match="never fire"):
            tiny_llama.run(PROMPT, capture=["resid_post"], layers=[1], stop_at_layer=1)
        assert calls == []
        tiny_llama.run(PROMPT, capture=["resid_post"], layers=[0], stop_at_layer=1)
        assert calls == [1]
    finally:
        handle.remove()


def _probe_session(model, names, required):
    s = HookSession(model._points, model._dormant)
    for n in names:
        s.add(n, lambda x, _n: None, required=required)
    return s


def test_required_hook_that_never_fires_is_an_error(tiny_llama):
    """HookSession: a ``required`` hook the forward never reached raises HookError naming it."""
    ids, _ = tiny_llama.tokenize(PROMPT)
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    session = _probe_session(tiny_llama, names, required=True)
    with pytest.raises(HookError) as ei:
        with session, torch.no_grad():
            tiny_llama.bridge(ids, return_type="logits", stop_at_layer=1)
    msg = str(ei.value)
    assert "never fired" in msg and "blocks.1.hook_resid_post" in msg and "ln_final.hook_normalized" in msg
    assert "blocks.0.hook_resid_post" not in msg and session.fired == {"blocks.0.hook_resid_post"}
    assert tiny_llama.leftover_hooks() == []  # removed before the error was raised

    optional = _probe_session(tiny_llama, names, required=False)  # not required: no error
    with optional, torch.no_grad():
        tiny_llama.bridge(ids, return_type="logits", stop_at_layer=1)
    assert optional.fired == {"blocks.0.hook_resid_post"}


def test_never_fired_check_does_not_mask_the_real_error(tiny_llama):
    """When the forward itself fails, its exception propagates, not a 'never fired' HookError."""
    ids, _ = tiny_llama.tokenize(PROMPT)
    session = _probe_session(tiny_llama, ["blocks.1.hook_resid_post"], required=True)

    def boom(x, _name):
        raise Injected("boom")

    session.add("blocks.0.hook_resid_post", boom)
    with pytest.raises(Injected):
        with session, torch.no_grad():
            tiny_llama.bridge(ids, return_type="logits")
    assert tiny_llama.leftover_hooks() == []


def test_intervention_hooks_are_not_required(tiny_llama):
    """Intervention hooks are attached with required=False: one past stop_at_layer is simply inert.

    (Captures are required, and checked at plan time; an intervention beyond the truncation
    cannot change what a truncated run returns, so it is not an error.)
    """
    iv = Raiser(Injected("must not fire"), layer=1)
    clean = tiny_llama.run(PROMPT, capture=["resid_post"], layers=[0], stop_at_layer=1)
    cut = tiny_llama.run(PROMPT, capture=["resid_post"], layers=[0], stop_at_layer=1, interventions=[iv])
    assert iv.calls == 0 and torch.equal(cut["resid_post", 0], clean["resid_post", 0])


def test_intervention_on_dormant_or_unknown_hook(tiny_llama):
    """An intervention naming a hook that never fires (or does not exist) fails before anything runs."""
    before = _snapshot(tiny_llama)
    for hook, words in [("hook_pos_embed", "never fires"), ("blocks.0.hook_resid_pots", "Did you mean")]:
        iv = Affine(0.0, hook=hook)
        for call in (lambda: tiny_llama.run(PROMPT, interventions=[iv]),
                     lambda: tiny_llama.generate(PROMPT, 2, interventions=[iv]),
                     lambda: compare(tiny_llama, PROMPT, iv),
                     lambda: _in_intervene(tiny_llama, iv, lambda: tiny_llama.run(PROMPT))):
            with pytest.raises(HookError, match=words):
                call()
    _assert_clean(tiny_llama, before)


# ---------------------------------------------------------------------------------- user hooks
def test_user_hooks_are_preserved_and_not_reported(tiny):
    """Hooks the user attached are never removed by our calls (faults included) nor listed as leftovers."""
    seen = {"block": 0, "pre": 0, "point": 0, "tl": 0}

    def count(key):
        def hook(*_args):
            seen[key] += 1
        return hook

    block, point = tiny.bridge.blocks[0], tiny.bridge.blocks[0].hook_resid_post
    handles = [block.register_forward_hook(count("block")), block.register_forward_pre_hook(count("pre")),
               point.register_forward_hook(count("point"))]
    tl_point = tiny.bridge.blocks[1].hook_resid_post
    tl_point.add_hook(lambda x, hook: seen.__setitem__("tl", seen["tl"] + 1))  # TransformerLens's own API
    try:
        n_hooks = _hook_count(tiny)
        tiny.run(PROMPT, capture=["resid_post"])
        assert seen == {"block": 1, "pre": 1, "point": 1, "tl": 1}
        for entry, call in ENTRY_POINTS.items():
            with pytest.raises(Injected):
                call(tiny, Raiser(Injected("x")))
        compare(tiny, PROMPT, HeadAblation(0, 1))
        tiny.generate(PROMPT, 2, interventions=[Affine(2.0)])
        tiny.prefill(PROMPT)
        assert tiny.leftover_hooks() == [] and _hook_count(tiny) == n_hooks
        assert block._forward_hooks and block._forward_pre_hooks and point._forward_hooks
        seen.update(block=0, pre=0, point=0, tl=0)
        tiny.run(PROMPT)
        assert seen == {"block": 1, "pre": 1, "point": 1, "tl": 1}  # all still attached and firing
    finally:
        for h in handles:
            h.remove()
        tl_point.remove_hooks(including_permanent=True)
    assert _hook_count(tiny) == n_hooks - 4


# ---------------------------------------------------------------------------------- nesting, scope
def test_nested_intervene_composes_and_unwinds_in_order(tiny):
    """Outer then inner block == Compose([outer, inner]) (order matters); each exit peels one layer."""
    double, shift = Affine(2.0), Affine(1.0, 0.5)
    clean = tiny.run(PROMPTS).logits
    only_outer = tiny.run(PROMPTS, interventions=[double]).logits
    outer_inner = tiny.run(PROMPTS, interventions=[double + shift]).logits
    inner_outer = tiny.run(PROMPTS, interventions=[shift + double]).logits
    assert not torch.allclose(outer_inner, inner_outer)  # the two orders really differ
    all_three = tiny.run(PROMPTS, interventions=[double + shift + Affine(3.0)]).logits

    with tiny.intervene(double):
        assert torch.equal(tiny.run(PROMPTS).logits, only_outer)
        with tiny.intervene(shift):
            assert [c.parts for c in tiny._active] == [[double], [shift]]
            assert torch.equal(tiny.run(PROMPTS).logits, outer_inner)
            # per-call interventions come after the active ones
            assert torch.equal(tiny.run(PROMPTS, interventions=[Affine(3.0)]).logits, all_three)
        assert torch.equal(tiny.run(PROMPTS).logits, only_outer)
        assert [c.parts for c in tiny._active] == [[double]]
    assert tiny._active == [] and torch.equal(tiny.run(PROMPTS).logits, clean)


def test_nested_intervene_unwinds_on_error(tiny_llama):
    before = _snapshot(tiny_llama)
    with pytest.raises(KeyboardInterrupt):
        with tiny_llama.intervene(Affine(2.0)):
            with tiny_llama.intervene(_zero_mlp()):
                with tiny_llama.intervene(Affine(1.0, 1.0)):
                    assert len(tiny_llama._active) == 3
                    raise KeyboardInterrupt
    _assert_clean(tiny_llama, before)


@pytest.mark.parametrize("iv_name", ["hook", "weights", "head"])
def test_effect_stops_exactly_at_block_exit(tiny, iv_name):
    """Inside the block a run equals the per-call intervened run; right after exit it equals the clean run."""
    iv = {"hook": Affine(0.0, 1.0), "head": HeadAblation(1, [0, 2]),
          "weights": _zero_mlp()}[iv_name]
    clean = tiny.run(PROMPTS, capture=["resid_post"]).logits
    clean_gen = tiny.generate(PROMPT, 4, stop_at_eos=False).logits
    per_call = tiny.run(PROMPTS, interventions=[iv]).logits
    per_call_gen = tiny.generate(PROMPT, 4, stop_at_eos=False, interventions=[iv]).logits
    assert not torch.allclose(per_call, clean)
    cm = tiny.intervene(iv)
    cm.__enter__()
    try:
        inside = tiny.run(PROMPTS, capture=["resid_post"])
        assert torch.equal(inside.logits, per_call)
        assert torch.equal(tiny.generate(PROMPT, 4, stop_at_eos=False).logits, per_call_gen)
    finally:
        cm.__exit__(None, None, None)
    assert tiny._active == []
    assert torch.equal(tiny.run(PROMPTS, capture=["resid_post"]).logits, clean)
    assert torch.equal(tiny.generate(PROMPT, 4, stop_at_eos=False).logits, clean_gen)
    assert torch.equal(inside.logits, per_call)  # results made inside are not touched by the exit


# ---------------------------------------------------------------------------------- SmolLM2
@pytest.mark.smollm2
def test_smollm2_fault_injection(smollm2):
    """The same guarantees on the real model: run, compare and generate (cached and not) under faults."""
    prompts = ["The capital of France is", "2 + 2 ="]
    with torch.no_grad():
        logits = smollm2.run(prompts, logits="last").logits.clone()
    tokens = smollm2.generate(prompts[0], 2, stop_at_eos=False).new_tokens.tolist()
    weight = _mlp_weight(smollm2).detach().clone()
    n_hooks = _hook_count(smollm2)
    last = smollm2.info.n_layers - 1
    cases = [  # (call, fault kind, hook call that raises): generation also fails mid-way
        (lambda iv: smollm2.run(prompts, capture=["resid_post"], layers=[0, last], interventions=[iv]), "error", 1),
        (lambda iv: compare(smollm2, prompts, iv), "interrupt", 1),
        (lambda iv: smollm2.generate(prompts[0], 2, interventions=[iv], stop_at_eos=False), "error", 2),
        (lambda iv: smollm2.generate(prompts[0], 2, interventions=[iv], use_cache=False, stop_at_eos=False),
         "interrupt", 2),
        (lambda iv: _in_intervene(smollm2, iv, lambda: smollm2.generate(prompts[0], 2, stop_at_eos=False)),
         "interrupt", 1),
    ]
    for call, kind, on_call in cases:
        iv = Raiser(_exc(kind), on_call=on_call, layer=last, edit_weights=True)
        with pytest.raises(_exc_type(kind)) as ei:
            call(iv)
        assert ei.value is iv.exc and iv.calls == on_call
        assert smollm2.leftover_hooks() == [] and smollm2._active == []
        assert _hook_count(smollm2) == n_hooks and torch.equal(_mlp_weight(smollm2).detach(), weight)
    assert torch.equal(smollm2.run(prompts, logits="last").logits, logits)
    assert smollm2.generate(prompts[0], 2, stop_at_eos=False).new_tokens.tolist() == tokens


def test_intervene_checks_hook_names_on_entry(tiny_llama):
    """A misspelt hook name fails at the ``with`` line, before the body runs, with a close match."""
    entered = False
    with pytest.raises(HookError, match="hook_resid_post"):
        with tiny_llama.intervene(Affine(hook="blocks.0.hook_resid_pots")):
            entered = True
    assert not entered and tiny_llama._active == [] and tiny_llama.leftover_hooks() == []
