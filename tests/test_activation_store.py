"""The on-disk activation store: exact round trip, shuffled streaming, resume, missing/corrupt shards."""
import pytest
import torch

import probes.transcoders.store as tc_store
from probes.transcoders.harvest import hook_names
from probes.transcoders.store import harvest_store, shard_owner, store_pairs
from workbench.activation_store import (ActivationStore, StoreError, StoreIndex, create_store, mark_file, shard_file,
                                        write_shard)
from workbench.errors import InputError
from workbench.texts import load_corpus


def _index(dtype="float32", rows=12, shards=5):
    return StoreIndex("fp-test", {"a": 3, "b": 2}, dtype, rows, shards, {"what": "random rows"})


def _fill(folder, index, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = []
    for i in range(index.n_shards):
        t = {n: torch.randn(index.rows_per_shard, w, generator=g) for n, w in index.names.items()}
        write_shard(folder, index, i, t)
        data.append(t)
    return data


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_is_exact(tmp_path, dtype):
    index = _index(dtype)
    create_store(tmp_path, index)
    data = _fill(tmp_path, index)
    store = ActivationStore(tmp_path)
    assert store.n_rows == 60 and store.complete() and store.names == ["a", "b"]
    store.verify()
    dt = getattr(torch, dtype)
    for i, t in enumerate(data):
        got = store.shard(i)
        for n in t:
            assert got[n].dtype == dt
            assert torch.equal(got[n], t[n].to(dt))  # bit-exact in the stored dtype


def test_batches_cover_every_row_once_per_epoch_and_ranks_split_the_global_batch(tmp_path):
    index = _index(rows=12, shards=5)  # 60 rows, batches of 6 -> 10 per epoch, no remainder
    create_store(tmp_path, index)
    _fill(tmp_path, index)
    store = ActivationStore(tmp_path)
    one = list(store.batches(6, seed=3, shards_in_memory=2, epochs=1))
    assert len(one) == 10 and all(b["a"].shape == (6, 3) and b["a"].dtype == torch.float32 for b in one)
    rows = torch.cat([b["a"] for b in one])
    every = torch.cat([store.shard(i)["a"] for i in range(5)])
    assert torch.equal(rows[rows[:, 0].argsort()], every[every[:, 0].argsort()])  # a permutation of all rows
    # the rows of one batch stay aligned across names
    for b in one:
        pair = {tuple(r.tolist()): s for i in range(5) for r, s in zip(store.shard(i)["a"], store.shard(i)["b"])}
        for ra, rb in zip(b["a"], b["b"]):
            assert torch.equal(pair[tuple(ra.tolist())], rb)
    # reproducible, and another seed gives another order
    assert all(torch.equal(x["a"], y["a"]) for x, y in zip(one, store.batches(6, seed=3, shards_in_memory=2, epochs=1)))
    assert not torch.equal(one[0]["a"], next(store.batches(6, seed=4, shards_in_memory=2))["a"])
    # two ranks: rank 0 then rank 1 rows make exactly the one-process batch
    r0 = list(store.batches(6, seed=3, shards_in_memory=2, epochs=1, rank=0, world_size=2))
    r1 = list(store.batches(6, seed=3, shards_in_memory=2, epochs=1, rank=1, world_size=2))
    for b, x, y in zip(one, r0, r1):
        assert x["a"].shape == (3, 3)
        assert torch.equal(torch.cat([x["a"], y["a"]]), b["a"])
    with pytest.raises(InputError, match="not divisible by the world size"):
        next(store.batches(6, world_size=4))


def test_remainder_rows_carry_into_the_next_group(tmp_path):
    index = _index(rows=7, shards=4)  # groups of 7 rows, batches of 4: the leftovers must not be lost
    create_store(tmp_path, index)
    _fill(tmp_path, index)
    store = ActivationStore(tmp_path)
    got = torch.cat([b["a"] for b in store.batches(4, shards_in_memory=1, epochs=1)])
    assert got.shape[0] == 28  # 28 rows, 7 batches: every row once
    assert torch.unique(got, dim=0).shape[0] == 28


def test_missing_and_corrupt_shards_give_clear_errors(tmp_path):
    index = _index(shards=3)
    create_store(tmp_path, index)
    _fill(tmp_path, index)
    (tmp_path / mark_file(1)).unlink()  # shard 1 never finished
    with pytest.raises(StoreError, match=r"incomplete: 1 of 3 shards missing, first \[1\].*rank 1 of 2"):
        ActivationStore(tmp_path, require_complete=False).check_complete(owner=lambda i: f"rank {shard_owner(i, 2)} of 2")
    with pytest.raises(StoreError, match="Rerun the harvest"):
        ActivationStore(tmp_path)
    with pytest.raises(StoreError, match="Shard 1 .* missing"):
        ActivationStore(tmp_path, require_complete=False).shard(1)
    write_shard(tmp_path, index, 1, {n: torch.zeros(12, w) for n, w in index.names.items()})
    store = ActivationStore(tmp_path)
    # truncated file
    p = tmp_path / shard_file(2)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(StoreError, match="Shard 2 .* corrupt"):
        store.shard(2)
    # same size, damaged header
    write_shard(tmp_path, index, 2, {n: torch.ones(12, w) for n, w in index.names.items()})
    raw = bytearray(p.read_bytes())
    raw[8:16] = b"\xff" * 8
    p.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="Shard 2 .* unreadable"):
        store.shard(2)
    with pytest.raises(StoreError, match="Shard 2 .* corrupt"):
        store.verify()
    (tmp_path / shard_file(0)).unlink()
    with pytest.raises(StoreError, match="first \\[0\\]"):
        ActivationStore(tmp_path)
    with pytest.raises(StoreError, match="index.json is missing"):
        ActivationStore(tmp_path / "nowhere")


def test_bad_writes_and_a_different_index_are_refused(tmp_path):
    index = _index(dtype="float16")
    create_store(tmp_path, index)
    other = _index(dtype="float16")
    other.meta = {"what": "another harvest"}
    with pytest.raises(InputError, match="different activation store"):
        create_store(tmp_path, other)
    with pytest.raises(InputError, match="shape"):
        write_shard(tmp_path, index, 0, {"a": torch.zeros(11, 3), "b": torch.zeros(12, 2)})
    with pytest.raises(InputError, match="exactly the tensors"):
        write_shard(tmp_path, index, 0, {"a": torch.zeros(12, 3)})
    with pytest.raises(InputError, match="non-finite"):
        write_shard(tmp_path, index, 0, {"a": torch.full((12, 3), 1e6), "b": torch.zeros(12, 2)})
    with pytest.raises(InputError, match="out of range"):
        write_shard(tmp_path, index, 9, {"a": torch.zeros(12, 3), "b": torch.zeros(12, 2)})
    with pytest.raises(InputError, match="float16, bfloat16 or float32"):
        tc_store.dtype_name(torch.int8)


# ---------------------------------------------------------------------------------- model harvest
HARVEST = dict(context=17, batch_prompts=2, batches_per_shard=2, seed=1)


@pytest.fixture(scope="module")
def texts():
    return load_corpus("train")[:12]


def test_harvest_store_rows_equal_the_captures(tmp_path, tiny_llama, texts):
    store = harvest_store(tiny_llama, [0, 1], tmp_path, 3, texts, **HARVEST, dtype=torch.float32)
    assert store.index.rows_per_shard == 2 * 2 * 16 and store.index.model_fingerprint == tiny_llama.fingerprint
    # shard 1 = window batches 2 and 3 of the seeded order; recompute them directly
    windows = tc_store._windows(tiny_llama, texts, 17, 1)[4:8]
    run = tiny_llama.run(windows, capture=list(hook_names(1)), logits=None)
    x = run.captures[hook_names(1)[0]][:, 1:].reshape(-1, 64)
    got = store.shard(1)[hook_names(1)[0]]
    torch.testing.assert_close(got, x, rtol=0, atol=1e-6)
    b = next(store_pairs(store, [1], 8))
    assert set(b) == {1} and b[1][0].shape == (8, 64) and b[1][1].shape == (8, 64)
    with pytest.raises(InputError, match="no rows for"):
        next(store_pairs(store, [5], 8))


def test_interrupted_harvest_resumes_to_the_same_store(tmp_path, tiny_llama, texts, monkeypatch):
    fresh = harvest_store(tiny_llama, [1], tmp_path / "fresh", 4, texts, **HARVEST)
    real, calls = tc_store.write_shard, []

    def dies_after_two(folder, index, i, tensors):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(i)
        return real(folder, index, i, tensors)

    monkeypatch.setattr(tc_store, "write_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        harvest_store(tiny_llama, [1], tmp_path / "resumed", 4, texts, **HARVEST)
    part = ActivationStore(tmp_path / "resumed", require_complete=False)
    assert part.missing() == [2, 3]
    assert not list((tmp_path / "resumed").glob(".*"))  # no temporary file left behind
    monkeypatch.setattr(tc_store, "write_shard", real)
    written = []
    monkeypatch.setattr(tc_store, "write_shard", lambda *a: written.append(a[2]) or real(*a))
    resumed = harvest_store(tiny_llama, [1], tmp_path / "resumed", 4, texts, **HARVEST)
    assert written == [2, 3]  # only the missing shards were harvested again
    for i in range(4):
        assert resumed.mark(i)["sha256"] == fresh.mark(i)["sha256"]  # byte-identical shards
    with pytest.raises(InputError, match="different activation store"):
        harvest_store(tiny_llama, [1], tmp_path / "resumed", 4, texts, **{**HARVEST, "seed": 2})


def test_harvest_store_refuses_too_few_windows(tmp_path, tiny_llama, texts):
    with pytest.raises(InputError, match="lower n_shards"):
        harvest_store(tiny_llama, [0], tmp_path, 10_000, texts, **HARVEST)
    with pytest.raises(InputError, match="n_shards must be a positive integer"):
        harvest_store(tiny_llama, [0], tmp_path, 0, texts, **HARVEST)
    assert not (tmp_path / "index.json").exists()  # refused before anything was written
