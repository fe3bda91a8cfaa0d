"""The frames explorer widget, headless: change text/concept -> scores change; Generate -> guided vs greedy."""
import pytest

from probes.frames import frames_explorer
from probes.frames.wordnet import wordnet_available

pytestmark = pytest.mark.skipif(not wordnet_available(),
                                reason="WordNet 3.0 (Debian wordnet-base) is not installed: run `make system`")


def test_explorer_headless(tiny_llama):
    box = frames_explorer(tiny_llama, concepts=["dog.n.01", "cat.n.01 - dog.n.01"], text="a dog barks",
                          prompt="The dog", frame_k=8, k=2, max_new_tokens=4)
    fig = box.figure
    y0, x0 = tuple(fig.data[0].y), tuple(fig.data[0].x)
    assert len(y0) == len("a dog barks")  # byte tokens
    box.text.value = "a cat sleeps all day"
    assert len(fig.data[0].x) == len("a cat sleeps all day") and tuple(fig.data[0].x) != x0
    y1 = tuple(fig.data[0].y)
    box.concept.value = "cat.n.01 - dog.n.01"
    assert tuple(fig.data[0].y) != y1 and "cat.n.01 − dog.n.01" in fig.layout.title.text
    # bad input goes to the status line, the figure keeps its data
    box.concept.value = "notaword.n.01"
    assert "Unknown WordNet synset" in box.status.value and tuple(fig.data[0].y) != ()
    box.concept.value = "dog.n.01"
    box.text.value = "   "
    assert "empty" in box.status.value
    box.text.value = "dogs"
    assert box.status.value == ""
    # generation: the button and the scripted call give guided vs greedy side by side
    assert box.output.value == ""
    box.k_slider.value = 3
    box.generate_button.click()
    html1 = box.output.value
    assert "<table>" in html1 and "k = 3" in html1 and "tok/s" in box.status.value
    box.k_slider.value = 1
    g = box.generate()
    assert g.k == 1 and g.guided_tokens == g.greedy_tokens and box.output.value != html1
    assert tiny_llama.leftover_hooks() == []
