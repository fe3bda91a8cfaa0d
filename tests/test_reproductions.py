"""REPRODUCTIONS.md machinery: key paths, verdict rules on synthetic numbers, the registry, the quick rows."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lab.reproductions import (
    NOT_AT_135M,
    NOT_MEASURED,
    PARTLY,
    REFUTED,
    REPRODUCED,
    AllOf,
    AtLeast,
    AtMost,
    Claim,
    Derived,
    FirstOf,
    Missing,
    claims,
    lookup,
    num,
    reproduction_table,
)
from lab.reproductions.measure import bootstrap_ci, paired_permutation_p, spearman
from lab.reproductions.sources import COMMANDS, QUICK
from workbench.errors import InputError

DOC = {"a": {"rows": [{"label": "x", "ratio": 0.2, "ppl": 10.0}, {"label": "y", "ratio": 0.2, "ppl": 12.0},
                      {"label": "y", "ratio": 0.3, "ppl": 15.0}], "list": [1, 2, 3], "none": None}}


# ------------------------------------------------------------------------------------------ key paths
def test_lookup_keys_indices_and_selectors():
    assert lookup(DOC, "a/list/-1") == 3
    assert lookup(DOC, "a/rows/[label=y]/ppl") == 12.0  # first match
    assert lookup(DOC, "a/rows/[label=y&ratio=0.3]/ppl") == 15.0
    assert lookup(DOC, "a/rows/[ratio=0.30]/ppl") == 15.0  # numbers compare as numbers
    for bad in ("a/missing", "a/list/7", "a/rows/[label=z]/ppl", "a/none", "a/list/[label=x]"):
        with pytest.raises(Missing):
            lookup(DOC, bad)


# ------------------------------------------------------------------------------------------ rules
def test_at_least_and_at_most_thresholds():
    r = AtLeast("x", 0.9, 0.5, fail=NOT_AT_135M)
    assert [r.decide({"x": v}).verdict for v in (0.95, 0.9, 0.7, 0.5, 0.49)] == \
        [REPRODUCED, REPRODUCED, PARTLY, PARTLY, NOT_AT_135M]
    r = AtMost("x", 0.1, 0.25)
    assert [r.decide({"x": v}).verdict for v in (0.05, 0.2, 0.3)] == [REPRODUCED, PARTLY, REFUTED]
    assert AtLeast("x", 1.0).decide({"x": 0.99}).verdict == REFUTED  # no partly band
    with pytest.raises(InputError):
        AtLeast("x", 0.5, 0.9)
    with pytest.raises(InputError):
        AtMost("x", 0.5, fail="reproduced")


def test_all_of_and_first_of():
    both = AllOf((AtLeast("a", 1), AtLeast("b", 1)), fail=NOT_AT_135M)
    assert both.decide({"a": 2, "b": 2}).verdict == REPRODUCED
    assert both.decide({"a": 2, "b": 0}).verdict == PARTLY
    assert both.decide({"a": 0, "b": 0}).verdict == NOT_AT_135M
    first = FirstOf((AtLeast("a", 1), AtLeast("b", 1)))
    assert first.decide({"a": 2, "b": 0}).verdict == REPRODUCED
    assert first.decide({"a": 0, "b": 2}).verdict == PARTLY  # the fallback setting caps the verdict
    assert first.decide({"a": 0, "b": 0}).verdict == REFUTED


def _claim(rule=None, **kw):
    return Claim(key="t.claim", paper="P", claim="c", paper_setting="s", paper_number="n", our_setting="o",
                 numbers=(num("x", ("f", "a/rows/[label=x]/ppl"), ("g", "v")), num("y", ("f", "a/rows/[label=y]/ppl")),
                          Derived("r", ("x", "y"), lambda x, y: x / y)),
                 rule=rule or AtMost("r", 0.9, 1.0), ours="{x:.1f} vs {y:.1f}", command="python run.py", **kw)


def test_claim_verdict_needs_every_number():
    c = _claim()
    row = c.evaluate({"f": DOC})
    assert row.verdict == REPRODUCED and row.ours == "10.0 vs 12.0" and math.isclose(row.values["r"], 10 / 12)
    assert row.sources == ("f.json: a/rows/[label=x]/ppl", "f.json: a/rows/[label=y]/ppl")
    for results in ({}, {"g": {"v": 1.0}}, {"f": {"a": {"rows": []}}}):
        row = c.evaluate(results)
        assert row.verdict == NOT_MEASURED and row.ours == "not yet measured" and not row.values
        assert "missing" in row.reason
    # the second source stands in when the first file lacks the key
    row = c.evaluate({"f": {"a": {"rows": [{"label": "y", "ppl": 2.0}]}}, "g": {"v": 1.0}})
    assert row.verdict == REPRODUCED and row.sources[0] == "g.json: v"
    # a number that is not finite gives no verdict
    assert c.evaluate({"f": {"a": {"rows": [{"label": "x", "ppl": 1.0}, {"label": "y", "ppl": 0.0}]}}}).verdict \
        in (NOT_MEASURED,)


def test_claim_rejects_unknown_names():
    with pytest.raises(InputError):
        _claim(rule=AtLeast("nope", 1))


# ------------------------------------------------------------------------------------------ the registry
def test_registry_covers_the_issue_and_every_row_has_a_command():
    cs = claims()
    keys = [c.key for c in cs]
    assert len(keys) == len(set(keys))
    papers = " ".join(c.paper for c in cs)
    for name in ("Active-Dormant", "Massive Values", "Summing Up", "Attention Satisfies", "Transcoders",
                 "Frame Representation", "StreamingLLM", "H2O", "SnapKV", "ZigZagKV", "KIVI", "QuaRot", "DFRot",
                 "TEAL", "SLEB", "ShortGPT", "LaCo", "LASER", "SVD-LLM", "MHA2MLA"):
        assert name in papers, name
    known = set(COMMANDS) | {"reproductions"}
    for c in cs:
        assert c.command.startswith("python "), c.key
        for n in c.numbers:
            for stem, _ in getattr(n, "sources", ()):
                assert stem in known, (c.key, stem)


def test_empty_results_give_no_verdicts_and_the_markdown_lists_every_claim(tmp_path):
    t = reproduction_table(tmp_path)  # an empty folder
    assert all(r.verdict == NOT_MEASURED and r.ours == "not yet measured" for r in t.rows)
    md = t.to_markdown()
    for c in claims():
        assert f"`{c.key}`" in md and c.command in md
    out = t.write_markdown(tmp_path / "R.md")
    assert out.read_text() == md


def _put(doc, path, value):
    """Create ``path`` (as ``lookup`` reads it) inside ``doc`` holding ``value``."""
    segs = path.split("/")
    cur = doc
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg.startswith("["):
            conds = dict(c.split("=", 1) for c in seg[1:-1].split("&"))
            hit = next((x for x in cur if all(str(x.get(k)) == v for k, v in conds.items())), None)
            if hit is None:
                hit = dict(conds)
                cur.append(hit)
            cur = hit
            continue
        nxt_list = not last and segs[i + 1].startswith("[")
        if last:
            cur[seg] = value
        else:
            cur = cur.setdefault(seg, [] if nxt_list else {})


def test_synthetic_benchmark_numbers_give_the_expected_verdicts():
    by = {c.key: c for c in claims()}
    quant = {}
    for label, ppl in (("fp32", 20.0), ("W4A4 (no rotation)", 2000.0), ("W4A4 RH (QuaRot)", 21.0),
                       ("W4A4 RO (QuaRot, random orthogonal)", 30.0), ("W4A4 DFRot", 20.5)):
        _put(quant, f"quality/rows/[label={label}]/perplexity", ppl)
    assert by["quant.quarot"].evaluate({"quant": quant}).verdict == REPRODUCED
    assert by["quant.dfrot.rh_vs_ro"].evaluate({"quant": quant}).verdict == REPRODUCED
    _put(quant, "quality/rows/[label=W4A4 RH (QuaRot)]/perplexity", 1900.0)  # rotation barely helps
    assert by["quant.quarot"].evaluate({"quant": quant}).verdict == NOT_AT_135M
    assert by["quant.dfrot.rh_vs_ro"].evaluate({"quant": quant}).verdict == REFUTED
    kv = {}
    _put(kv, "quality/passkey/scores/full cache", 1.0)
    _put(kv, "quality/passkey/scores/snapkv", 1.0)
    _put(kv, "quality/passkey/scores/h2o", 0.0)
    assert by["kv.snapkv.passkey"].evaluate({"kv": kv}).verdict == REPRODUCED
    assert by["kv.h2o.passkey"].evaluate({"kv": kv}).verdict == REFUTED
    _put(kv, "quality/passkey/scores/full cache", 0.0)  # a full cache that fails: no verdict
    assert by["kv.snapkv.passkey"].evaluate({"kv": kv}).verdict == NOT_MEASURED


def test_statistics_helpers():
    assert paired_permutation_p([1.0] * 10) == pytest.approx(1 / 1024)
    assert paired_permutation_p([-1.0] * 10) == 1.0
    assert paired_permutation_p(np.ones(40), n_perm=2000) < 0.002
    x = np.arange(30, dtype=float)
    assert spearman(x, -x) == pytest.approx(-1.0)
    _, hi = bootstrap_ci(lambda i: spearman(x[i], -x[i] + 0.1 * np.sin(x[i])), 30)
    assert hi < 0
    with pytest.raises(InputError):
        paired_permutation_p([])


# ------------------------------------------------------------------------------------------ quick rows
def _quick_paths(section: str):
    for c in claims():
        for n in c.numbers:
            for stem, path in getattr(n, "sources", ()):
                if stem == QUICK and path.startswith(section + "/"):
                    yield c.key, path


def test_quick_sinks_on_a_tiny_model_fills_every_sinks_path(tiny_llama):
    from lab.reproductions.quick import QuickSizes, run_quick

    res = run_quick(tiny_llama, QuickSizes(sink_tokens=32), sections=["sinks"])
    paths = list(_quick_paths("sinks"))
    assert paths
    for key, path in paths:
        lookup(res, path)  # raises Missing if the layout and the claims disagree
    assert res["sinks"]["numbers"]["massive"]["max_ratio"] >= 1.0
    with pytest.raises(InputError):
        run_quick(tiny_llama, sections=["nope"])


@pytest.mark.smollm2
def test_quick_rows_on_smollm2(smollm2, tmp_path):
    from lab.reproductions.quick import QuickSizes, run_quick
    from workbench.paths import atomic_write_json

    # the sinks section only (seconds): the Q/K disruption and KV sections generate passkey answers under
    # several interventions (minutes on 2 cores); the script and the notebook run them, and their layout is
    # checked on tiny-llama and through the claims that read them
    sections = ("sinks",)
    sizes = QuickSizes(sink_tokens=128, passkey_n=1, passkey_tokens=224, ppl_n=1, ppl_tokens=160)
    res = run_quick(smollm2, sizes, sections=sections)
    for key, path in (p for s in sections for p in _quick_paths(s)):
        lookup(res, path)
    atomic_write_json(tmp_path / "reproductions_quick.json", res)
    t = reproduction_table(tmp_path)
    quick_only = {c.key for c in claims() if all(s == QUICK for n in c.numbers for s, _ in getattr(n, "sources", ()))}
    rows = {r.claim.key: r for r in t.rows}
    assert quick_only <= set(rows)
    sink_rows = {k for k, _ in _quick_paths("sinks")}
    sink_rows = {k for k in sink_rows if all(p.startswith("sinks/") for c in claims() if c.key == k
                                             for n in c.numbers for st, p in getattr(n, "sources", ()) if st == QUICK)}
    assert sink_rows and all(rows[k].measured for k in sink_rows), [(k, rows[k].reason) for k in sink_rows]
    # what SmolLM2 shows at any size: sinks beyond layer 2 and a massive residual peak at position 0
    assert rows["sinks.attention_sink"].verdict == REPRODUCED
    assert rows["sinks.residual_peak"].verdict == REPRODUCED and rows["sinks.residual_peak"].values["pos"] == 0
    for r in t.rows:
        assert (r.verdict == NOT_MEASURED) == (not r.values) or r.reason.startswith("not finite")
    md = t.to_markdown()
    assert all(f"`{c.key}`" in md for c in claims())


def test_measure_frames_runs_on_the_system_wordnet(tiny_llama):
    pytest.importorskip("nltk")
    from probes.frames.wordnet import wordnet_available
    from lab.reproductions.measure import MeasureSizes, measure_frames

    if not wordnet_available():
        pytest.skip("WordNet 3.0 (Debian wordnet-base) is not installed: run `make system`")
    sizes = MeasureSizes(frames_prompts=1, frames_tokens=2, frames_k=2, frames_concepts=("dog.n.01",), n_boot=20,
                         n_perm=20)
    g = measure_frames(tiny_llama, sizes)["guidance"]
    assert g["n_pairs"] == 1 and len(g["rows"]) == 1 and 0 <= g["p_value"] <= 1
