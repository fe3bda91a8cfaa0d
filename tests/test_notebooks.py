"""Every notebook in notebooks/ runs top to bottom, headless, through scripts/run_notebook.py.

The same ``run_notebook()`` as ``make demo`` (one implementation): papermill, kernel
``python3``, widget state not stored, executed notebook written atomically. Parameters are
kept small and every output goes under ``tmp_path``.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from workbench.figures import find_browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
TOUR_FIGURES = ("attention_sink_head", "residual_norms", "kv_cache_generation", "ablation_head", "ablation_mlp")
SINKS_FIGURES = ("sink_mass", "explorer_pattern", "explorer_mass", "explorer_values", "value_drain", "residual_peak",
                 "active_dormant", "intervention_active_to_sink", "qk_disruption_skip_first", "sink_mass_long")
# Per-notebook overrides on top of out_dir (only names the parameters cell defines are passed).
SMALL = {
    "00_tour": {"max_new_tokens": 4},
    "frames": {"n_rank_words": 3000, "bank_pos": "n", "bank_max_synsets": 1500, "n_corr_concepts": 200, "guide_tokens": 6, "n_bias_prompts": 2, "bias_tokens": 6},
    "attention_sinks": {"n_domain_texts": 1, "n_random_heads": 2, "n_passkey": 2, "passkey_tokens": 80,
                        "n_factual": 3, "long_prompt_tokens": 512},
    "kv_compression": {"passkey_tokens": 96, "kivi_bits": [4], "sweep_policies": ["streaming_llm", "snapkv"],
                       "sweep_ratios": [0.5], "n_sweep": 1, "n_ppl_texts": 1, "agnostic_policies": ["kvzip", "snapkv"],
                       "n_agnostic": 1, "lexico_sparsities": [8]},
    "factual_recall": {"n_eval_per_relation": 2, "n_mech_per_relation": 3, "suppression_alphas": [0.0, 1.0],
                       "n_patch_pairs": 1, "lens_pydoc_chunks": 6, "lens_max_tokens": 48, "lens_layer_step": 10,
                       "lens_eval_tokens": 100, "lre_n_train": 1, "lre_n_test": 4, "sat_n_prompts": 40,
                       "lre_study_candidates": 30, "lre_study_train": 3, "lre_study_layers": [8],
                       "lre_study_ranks": [32, 64], "sat_n_two_constraints": 30},
    "quantization": {"eval_windows": 1, "eval_tokens": 192, "kl_tokens": 48, "gptq_samples": 2, "gptq_seq_len": 48,
                     "dfrot_tokens": 48, "n_facts": 4, "n_passkey": 1, "passkey_tokens": 80, "explain_tokens": 40,
                     "table_methods": ["RTN W3 per-channel", "W4A4 RH (QuaRot)"], "spread_rotations": ["none", "rh"],
                     "error_methods": ["W4A4 RH (QuaRot)"], "int8_variants": [{}, {"rotation": "rh", "online_had": True}]},
    "reproductions": {"quick_sections": ["sinks"], "sink_tokens": 64},
    "transcoders": {"train_tokens": 2048, "train_steps": 5, "train_d_sae": 256, "eval_docs_per_domain": 1,
                    "eval_tokens_per_domain": 32, "eval_context": 32, "eval_heldout_tokens": 32, "feature_texts": 8},
}


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_notebook", ROOT / "scripts" / "run_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


runner = _load_runner()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path):
    known = runner.notebook_parameters(path)
    params = {"out_dir": str(tmp_path / "figures"), **SMALL.get(path.stem, {})}
    params = {k: v for k, v in params.items() if k in known}
    out = tmp_path / f"{path.stem}.ipynb"

    runner.run_notebook(path, out, params, cwd=tmp_path, timeout=600)

    assert out.is_file() and not (tmp_path / f"{path.stem}.failed.ipynb").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temporary files left behind"
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert [o for o in outputs if o.get("output_type") == "error"] == []
    stderr = "".join("".join(o["text"]) for o in outputs if o.get("name") == "stderr")
    assert "it/s]" not in stderr, f"a progress bar was saved in the notebook: {stderr[:200]!r}"
    assert nb["metadata"]["papermill"]["input_path"] == str(path)
    # store_widget_state=False: no multi-MB FigureWidget bundle saved in the notebook.
    assert "widgets" not in nb["metadata"]
    assert out.stat().st_size < 2_000_000

    if path.stem == "00_tour":
        figs = tmp_path / "figures"
        exts = ("html", "png") if find_browser() else ("html",)
        missing = [f"{n}.{e}" for n in TOUR_FIGURES for e in exts if not (figs / f"{n}.{e}").is_file()]
        assert missing == [], f"missing figures: {missing}"
        assert (figs / "plotly.min.js").is_file()  # include_plotlyjs="directory": one shared copy
        if "png" in exts:
            assert (figs / "residual_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = "".join(str(o) for o in outputs)
        assert "CaptureBudgetError" in text  # the memory guard section refused the long capture
    if path.stem == "attention_sinks":
        figs = tmp_path / "figures"
        missing = [f"{n}.html" for n in SINKS_FIGURES if not (figs / f"{n}.html").is_file()]
        assert missing == [], f"missing figures: {missing}"
        text = "".join(str(o) for o in outputs)
        assert f"sink_report on {SMALL[path.stem]['long_prompt_tokens']} tokens" in text  # ran at the small size


def test_runner_reports_failure_cleanly(tmp_path: Path):
    """A failing cell: NotebookError naming the cell and exception, partial notebook beside the output."""
    src = tmp_path / "broken.py"
    src.write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nraise ValueError(f"boom {x}")\n')
    out = tmp_path / "broken.ipynb"
    out.write_text("previous good output")
    env_before = {k: os.environ.get(k) for k in runner.NOTEBOOK_ENV}
    with pytest.raises(runner.NotebookError, match=r"ValueError: boom 2") as info:
        runner.run_notebook(src, out, {"x": 2}, cwd=tmp_path, timeout=60)
    assert {k: os.environ.get(k) for k in runner.NOTEBOOK_ENV} == env_before  # kernel env restored
    assert out.read_text() == "previous good output"  # never replaced by a failed run
    assert info.value.failed_path == tmp_path / "broken.failed.ipynb" and info.value.failed_path.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_runner_rejects_unknown_parameter(tmp_path: Path):
    src = tmp_path / "nb.py"
    src.write_text('# %% tags=["parameters"]\nx = 1\n')
    with pytest.raises(runner.NotebookError, match="no parameter"):
        runner.run_notebook(src, tmp_path / "nb.ipynb", {"y": 2}, cwd=tmp_path)


def test_cli_parses_parameter_values():
    assert runner.parse_value("None") is None
    assert runner.parse_value("8") == 8
    assert runner.parse_value("False") is False
    assert runner.parse_value("out/figures") == "out/figures"
    assert runner.parse_value("'a b'") == "a b"
