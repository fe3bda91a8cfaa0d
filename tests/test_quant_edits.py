"""Editor additions used by quantization: notes in active_edits, replacing the unembedding, suspended editors."""
import torch
from torch import nn

from workbench import InputError

PROMPT = "The cat sat on the mat."


class _Head(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.weight = nn.Parameter(w.clone(), requires_grad=False)
        self.bias = None
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return nn.functional.linear(x, self.weight)


def test_notes_are_recorded(tiny_llama):
    m = tiny_llama
    with m.edit_weights() as ed:
        ed.set_linear(0, "q", weight=m.linear_weight(0, "q"), note="quantized by test")
        ed.replace_linear(0, "k", _Head(m.linear_weight(0, "k")), note="quantized by test")
        ed.set_linear(0, "v", weight=m.linear_weight(0, "v"))
        assert m.active_edits() == [("L0.q", "quantized by test"), ("L0.k", "quantized by test"),
                                    ("L0.v", "weights edited")]
        with m.without_interventions():
            assert m.active_edits() == []  # suspended edits are not in force
        assert len(m.active_edits()) == 3
    assert m.active_edits() == []


def test_replace_unembedding_untied_and_tied(tiny_llama, tiny_gpt2):
    for m in (tiny_llama, tiny_gpt2):
        ref = m.run(PROMPT).logits
        before = dict(m.hf.named_parameters())
        tied = m.embedding_module().weight is m.unembedding_module().weight
        head = _Head(2.0 * m.weights().W_U.t())
        with m.edit_weights() as ed:
            ed.replace_unembedding(head, note="doubled")
            out = m.run(PROMPT).logits
            # The first forward after an edit may also run the hook-free view's exactness probe (which
            # calls the head through both paths); a second forward calls it exactly once.
            assert head.calls >= 1
            head.calls = 0
            assert torch.equal(m.run(PROMPT).logits, out)
            assert head.calls == 1
            assert m.active_edits() == [("unembed", "doubled")]
            assert torch.equal(m.weights().W_U, head.weight.t())
            if tied:  # the embedding keeps the shared matrix
                assert torch.equal(m.weights().W_E, before["transformer.wte.weight"] if "transformer.wte.weight" in before
                                   else m.embedding_module().weight)
        assert head.calls == 1  # not called again once the edit is undone
        b = m.weights().b_U
        expected = 2.0 * (ref - (0 if b is None else b))
        assert torch.allclose(out, expected, atol=1e-4)
        assert torch.equal(m.run(PROMPT).logits, ref)
        assert (m.embedding_module().weight is m.unembedding_module().weight) == tied
        now = dict(m.hf.named_parameters())
        assert set(now) == set(before) and all(torch.equal(now[n], before[n]) for n in before)
    with tiny_llama.edit_weights() as ed:
        try:
            ed.replace_unembedding("not a module")
        except InputError as e:
            assert "nn.Module" in str(e)
        else:
            raise AssertionError("expected an InputError")
