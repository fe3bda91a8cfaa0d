"""Data parallelism on torch.distributed (gloo, CPU): 2 processes train what 1 process trains.

Tolerance: the 2-process gradients are the mean of two half-batch means instead of one
whole-batch mean, which differs only in float32 rounding (about 1e-7 relative per step); the
weights after the steps below are asserted equal to 1e-5 absolute (observed: about 1e-8).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_helpers import STEPS, train
from workbench.distributed import DistContext, check_divides, init_distributed
from workbench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def _cfg(**kw):
    base = dict(d_in=16, d_out=16, d_sae=48, total_steps=STEPS, lr=1e-2, batch_size=64, lr_warmup_steps=5, seed=3,
                dead_window=5, log_every=5)
    base.update(kw)
    return base


CONFIGS = {
    "relu+resampling": _cfg(activation="relu", l1_coefficient=1.0, d_sae=96, resample_every=10,
                            resample_until=20),
    "topk+auxk": _cfg(activation="topk", k=4, aux_k=8),
    "jumprelu": _cfg(activation="jumprelu", l0_coefficient=0.01),
}


SCRIPT_ARGS = ["--model", "tiny-llama", "--layers", "0", "1", "--n-shards", "4", "--batches-per-shard", "1",
               "--batch-prompts", "2", "--context", "33", "--max-texts", "20", "--d-sae", "128", "--k", "8",
               "--steps", "6", "--batch-size", "32", "--seed", "0"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One torchrun launch (gloo, 2 processes): the synthetic trainer configs, then
    scripts/train_distributed.py (harvest into a store and train on tiny-llama)."""
    tmp = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "distributed_helpers.py"), str(tmp / "w"), json.dumps(CONFIGS), "--",
           "--backend", "gloo", *SCRIPT_ARGS, "--store", str(tmp / "s2"), "--out", str(tmp / "o2")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return tmp, p.stdout


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_process_trainer_equals_one_process(two_process_run, name):
    """ReLU with resampling (on the all-gathered batch), TopK with AuxK, JumpReLU."""
    from safetensors.torch import load_file

    tmp, _ = two_process_run
    cfg = CONFIGS[name]
    ref = train(cfg, DistContext())  # one process, whole global batch
    r0, r1 = load_file(f"{tmp / 'w'}.{name}.rank0"), load_file(f"{tmp / 'w'}.{name}.rank1")
    for k in ref:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0)  # ranks hold identical parameters
        torch.testing.assert_close(r0[k], ref[k], rtol=0, atol=TOL, msg=lambda m: f"{name} {k}: {m}")
    assert r0["tokens"].item() == ref["tokens"].item() == STEPS * cfg["batch_size"]
    if name.startswith("relu"):
        assert ref["resampled"].item() > 0  # the all-gather resampling path really ran
    if name.startswith("topk"):
        assert ref["aux_steps"].item() > 0  # dead features existed, so the AuxK loss was in the gradient


def test_torchrun_script_two_processes_equal_one_process(two_process_run, tmp_path):
    """scripts/train_distributed.py: harvest into a store and train, 1 process vs torchrun with 2."""
    from safetensors.torch import load_file

    tmp, stdout = two_process_run
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_distributed

    one = train_distributed.main([*SCRIPT_ARGS, "--store", str(tmp_path / "s1"), "--out", str(tmp_path / "o1")])
    assert one["world_size"] == 1 and one["local_batch"] == 32
    assert '"world_size": 2' in stdout and '"local_batch": 16' in stdout
    assert '"rows_harvested_now": 256' in stdout  # 4 shards x 64 rows, summed over the two ranks
    # the store does not depend on the number of harvesting processes: byte-identical shards
    for i in range(4):
        a = json.loads((tmp_path / "s1" / f"shard-{i:06d}.done.json").read_text())
        b = json.loads((tmp / "s2" / f"shard-{i:06d}.done.json").read_text())
        assert a["sha256"] == b["sha256"]
    for layer in (0, 1):
        w1 = load_file(str(tmp_path / "o1" / f"layer{layer}" / "sae_weights.safetensors"))
        w2 = load_file(str(tmp / "o2" / f"layer{layer}" / "sae_weights.safetensors"))
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=TOL)
        assert not torch.equal(w1["W_enc"], load_file(str(tmp_path / "o1" / f"layer{1 - layer}" /
                                                           "sae_weights.safetensors"))["W_enc"])


# ---------------------------------------------------------------------------------- bad input
def test_world_size_must_divide_the_global_batch():
    with pytest.raises(InputError, match=r"not divisible by the world size \(3\).*multiple of 3 \(e.g. 1023 or 1026\)"):
        check_divides(1024, 3)
    with pytest.raises(InputError, match="not divisible"):
        DistContext(rank=0, world_size=4).local_batch(30)
    assert DistContext(rank=1, world_size=4).local_batch(32) == 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_cuda_or_nccl_without_cuda_is_refused():
    with pytest.raises(InputError, match="nccl.*CUDA is not available.*gloo"):
        init_distributed("nccl")
    with pytest.raises(InputError, match="CUDA is not available"):
        init_distributed("gloo", device="cuda")
    with pytest.raises(InputError, match="backend must be one of"):
        init_distributed("mpi")


def test_partial_environment_and_bad_rank_are_refused(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    ctx = init_distributed("gloo")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.distributed) == (0, 1, None, False)
    t = torch.tensor([1.0, 2.0])
    ctx.all_reduce_mean_([t])
    assert t.tolist() == [1.0, 2.0] and torch.equal(ctx.all_gather_cat(t), t)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match=r"Partial torch.distributed environment: \['MASTER_ADDR', 'MASTER_PORT'\]"):
        init_distributed("gloo")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InputError, match=r"RANK=2 is not in 0..WORLD_SIZE-1"):
        init_distributed("gloo")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(InputError, match="RANK='x' is not an integer"):
        init_distributed("gloo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trainer_on_cuda_matches_cpu():
    """The same seed and batches train the same transcoder on the GPU as on the CPU (float32 rounding)."""
    from probes.transcoders.config import TranscoderTrainingConfig
    from probes.transcoders.train import TranscoderTrainer
    from distributed_helpers import synthetic_batches

    for name, cfg in CONFIGS.items():
        trs = [TranscoderTrainer(TranscoderTrainingConfig.from_dict(cfg), device=d) for d in ("cpu", "cuda")]
        for _, (x, y) in zip(range(10), synthetic_batches(cfg["batch_size"])):
            for tr in trs:
                tr.step(x, y)
        assert trs[1].tc.W_enc.device.type == "cuda"
        for (n, a), b in zip(trs[0].tc.named_parameters(), trs[1].tc.parameters()):
            torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-4, msg=lambda m: f"{name} {n}: {m}")
