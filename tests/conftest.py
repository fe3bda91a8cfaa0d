"""Shared fixtures: tiny random models for unit tests, the bundled SmolLM2 for integration tests."""
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
# `make test` runs pytest-xdist workers (one per core, files kept together): each worker and the
# notebook kernels and subprocesses it starts get an equal share of the cores, because torch's
# threads collapse when they oversubscribe them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(THREADS)
warnings.filterwarnings("ignore", category=UserWarning, module="transformer_lens")


# Short SmolLM2 prompts shared by the extreme-token integration tests: prose, code, facts.
SMOL_PROMPTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door. "
    "Meanwhile, in the kitchen, the kettle began to whistle and steam rose to the ceiling.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.",
]


@pytest.fixture(scope="session")
def tiny_llama():
    import workbench as wb

    return wb.load("tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    import workbench as wb

    return wb.load("tiny-gpt2")


@pytest.fixture(params=["tiny-llama", "tiny-gpt2"])
def tiny(request, tiny_llama, tiny_gpt2):
    return tiny_llama if request.param == "tiny-llama" else tiny_gpt2


@pytest.fixture(scope="session")
def tiny_family_models():
    """name -> a tiny model of that family (``workbench.loading.tiny.TINY_MODELS``), each loaded once per session."""
    import workbench as wb

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = wb.load(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def smollm2():
    import workbench as wb

    return wb.load()


@pytest.fixture(scope="session")
def wordnet():
    """Skips the test when WordNet 3.0 (a system package) is missing, with the command that installs it."""
    from probes.frames.wordnet import wordnet_available

    if not wordnet_available():
        pytest.skip("WordNet 3.0 (Debian wordnet-base) is not installed: run `make system`")


@pytest.fixture(autouse=True)
def _no_leaked_hooks(request):
    """After every test, no model used by it may carry a hook the workbench attached."""
    yield
    # "tiny" is function-scoped and already torn down here; its session-scoped models are in
    # request.fixturenames (the closure), so checking those covers it.
    for name in ("tiny_llama", "tiny_gpt2", "smollm2"):
        if name in request.fixturenames:
            model = request.getfixturevalue(name)
            assert model.leftover_hooks() == [], f"hooks leaked on {name}: {model.leftover_hooks()}"
