"""Captures kept on the model's device or offloaded to the CPU; the memory guard and device memory."""
import pytest
import torch

import workbench as wb
import workbench.capture as capture
from workbench.capture import check_device_memory, device_free_bytes, resolve_capture_device
from workbench.errors import CaptureBudgetError, InputError


def test_offloaded_captures_equal_device_captures(tiny_llama):
    names = ["resid_post", "pattern"]
    a = tiny_llama.run("The cat sat on the mat.", capture=names, layers=[0, 1])
    b = tiny_llama.run("The cat sat on the mat.", capture=names, layers=[0, 1], capture_device="cpu")
    assert set(a.captures) == set(b.captures)
    for k in a.captures:
        assert b.captures[k].device.type == "cpu"
        assert torch.equal(a.captures[k], b.captures[k].to(a.captures[k].device))
    s = tiny_llama.run("The cat sat on the mat.", capture="pattern", attention="summary", capture_device="cpu")
    assert s.summaries[0].received.device.type == "cpu"


def test_bad_capture_device_is_refused(tiny_llama):
    with pytest.raises(InputError, match="capture_device must be"):
        tiny_llama.run("hi", capture="resid_post", capture_device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="needs CUDA"):
            tiny_llama.run("hi", capture="resid_post", capture_device="cuda")
    assert resolve_capture_device(None, torch.device("cpu")) == torch.device("cpu")
    assert resolve_capture_device("model", torch.device("cpu")) == torch.device("cpu")


def test_device_guard_reads_cuda_free_memory(tiny_llama, monkeypatch):
    """The guard asks torch.cuda.mem_get_info (mocked here) and counts what stays on the device."""
    queried = []

    def fake_mem_get_info(device=None):
        queried.append(torch.device(device))
        return 3 * 2**20, 80 * 2**30  # (free, total)

    monkeypatch.setattr(torch.cuda, "mem_get_info", fake_mem_get_info)
    assert device_free_bytes("cpu") is None and device_free_bytes(torch.device("cuda", 1)) == 3 * 2**20
    assert queried == [torch.device("cuda", 1)]
    prompts = ["word " * 40] * 64  # 200 tokens each (character-level tokenizer)
    est = tiny_llama.estimate_capture(prompts, capture=["resid_post", "mlp_out"], logits=None)
    captures = sum(est.per_item.values())
    assert captures > 3 * 2**20 and est.logits_bytes == 0 and est.transient_bytes == 0
    cuda = torch.device("cuda", 0)
    with pytest.raises(CaptureBudgetError, match=r"only 3 MiB of device memory is free.*capture_device='cpu'"):
        check_device_memory(est, cuda, cuda)
    with pytest.raises(CaptureBudgetError):
        check_device_memory(est, torch.device("cuda"), cuda)  # "cuda" and "cuda:0" are the same device
    check_device_memory(est, cuda, torch.device("cpu"))  # offloaded: nothing but logits/transients on the GPU
    check_device_memory(est, torch.device("cpu"), torch.device("cpu"))  # a CPU model: host budget only
    # logits stay on the device whatever capture_device says
    est_logits = tiny_llama.estimate_capture(prompts, capture=["resid_post"], logits="all")
    assert est_logits.logits_bytes > 3 * 2**20
    with pytest.raises(CaptureBudgetError, match="logits='last'"):
        check_device_memory(est_logits, cuda, torch.device("cpu"))


def test_run_consults_the_device_guard(tiny_llama, monkeypatch):
    """run() refuses before the forward pass when the model's device lacks the memory (query mocked)."""
    monkeypatch.setattr(capture, "device_free_bytes", lambda device: 2**10)
    before = tiny_llama.forward_count
    with pytest.raises(CaptureBudgetError, match="device memory is free"):
        tiny_llama.run("The cat sat on the mat.", capture="resid_post", logits=None)
    assert tiny_llama.forward_count == before
    monkeypatch.setattr(capture, "device_free_bytes", lambda device: 2**30)
    tiny_llama.run("The cat sat on the mat.", capture="resid_post", logits=None)


def test_estimate_uses_the_weights_dtype():
    m16 = wb.load("tiny-llama", dtype=torch.bfloat16, check_parity=False)
    m32 = wb.load("tiny-llama", check_parity=False)
    e16 = m16.estimate_capture("The cat sat.", capture="resid_post")
    e32 = m32.estimate_capture("The cat sat.", capture="resid_post")
    assert e16.total * 2 == e32.total
    r = m16.run("The cat sat.", capture="resid_post")
    assert sum(t.numel() * t.element_size() for t in r.captures.values()) == sum(e16.per_item.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_offloads_captures_and_reads_free_memory(monkeypatch):
    m = wb.load("tiny-llama", device="cuda", dtype=torch.bfloat16)
    free = device_free_bytes(m.device)
    assert isinstance(free, int) and free > 0
    a = m.run("The cat sat on the mat.", capture="resid_post")
    b = m.run("The cat sat on the mat.", capture="resid_post", capture_device="cpu")
    for k in a.captures:
        assert a.captures[k].device.type == "cuda" and b.captures[k].device.type == "cpu"
        assert torch.equal(a.captures[k].cpu(), b.captures[k])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**10, 2**30))
    with pytest.raises(CaptureBudgetError, match="device memory is free"):
        m.run("The cat sat on the mat.", capture="resid_post")
    m.run("The cat sat on the mat.", capture="resid_post", capture_device="cpu", logits=None)  # nothing left on the GPU
