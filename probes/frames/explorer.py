"""Interactive frames explorer: text + concept -> per-token scores; concept + k -> guided vs greedy.

``frames_explorer(model)`` returns an ``ipywidgets.VBox``:
- top: a text box and a concept box (a synset name, or 'A - B' for a combined concept); the
  per-token concept scores of the text are drawn in a plotly ``FigureWidget`` (one forward pass
  per change, data swapped inside ``batch_update``);
- bottom: a prompt box, k, direction and length controls and a *Generate* button that shows
  the guided and greedy continuations side by side.
Bad input (unknown synset, empty text) is shown in a status line instead of raising in a callback.
For scripted/headless use the box exposes ``.figure``, ``.text``, ``.concept``, ``.prompt``,
``.k_slider``, ``.direction``, ``.steps``, ``.generate_button``, ``.output`` (HTML), ``.status``,
``.score()`` and ``.generate()`` (which also return their results).
"""
from __future__ import annotations

import html

from workbench.errors import InputError
from workbench.view_layout import VIEW_WIDTH, fit_figure, wrap_row

from .guidance import DIRECTIONS, guided_generate

DEFAULT_CONCEPTS = ("woman.n.01 - man.n.01", "woman.n.01", "man.n.01", "dog.n.01", "food.n.01", "sadness.n.01",
                    "happiness.n.01", "france.n.01")
DEFAULT_TEXT = "My grandmother and her sister baked bread while the king rode his horse to war."
DEFAULT_PROMPT = "The nurse finished the night shift and"


def frames_explorer(model, concepts=DEFAULT_CONCEPTS, text: str = DEFAULT_TEXT, prompt: str = DEFAULT_PROMPT,
                    frame_k: int = 3, k: int = 2, max_new_tokens: int = 12, max_k: int = 8):
    import ipywidgets as widgets
    from workbench.figure_widget import FigureWidget  # plotly.js loaded once per page


    from .concepts import concept as build_concept
    from .scores import concept_scores

    concepts = list(concepts)
    if not concepts:
        raise InputError("frames_explorer needs at least one concept name.")
    built: dict[str, object] = {}

    def get_concept(name: str):
        name = name.strip()
        if name not in built:
            built[name] = build_concept(model, name, k=frame_k)
        return built[name]

    first = concept_scores(model, text, get_concept(concepts[0]))  # fails loudly on bad initial input
    fig = FigureWidget(fit_figure(first.figure(), width=VIEW_WIDTH))
    text_box = widgets.Textarea(value=text, description="text", layout=widgets.Layout(width="95%", height="60px"),
                                continuous_update=False)
    concept_box = widgets.Combobox(value=concepts[0], options=concepts, description="concept", ensure_option=False,
                                   continuous_update=False)
    status = widgets.HTML("")
    prompt_box = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="95%"),
                              continuous_update=False)
    k_slider = widgets.IntSlider(value=k, min=1, max=max_k, description="k")
    direction = widgets.ToggleButtons(options=list(DIRECTIONS), value="toward", description="guide")
    steps = widgets.IntSlider(value=max_new_tokens, min=1, max=64, description="tokens")
    button = widgets.Button(description="Generate", button_style="primary")
    output = widgets.HTML("")

    def score(*_):
        try:
            s = concept_scores(model, text_box.value, get_concept(concept_box.value))
        except InputError as e:
            status.value = f"<span style='color:#c00'>{html.escape(str(e))}</span>"
            return None
        new = s.figure()
        with fig.batch_update():
            fig.data[0].x = new.data[0].x
            fig.data[0].y = new.data[0].y
            fig.data[0].customdata = new.data[0].customdata
            fig.data[0].name = new.data[0].name
            fig.layout.xaxis.tickvals = new.layout.xaxis.tickvals
            fig.layout.xaxis.ticktext = new.layout.xaxis.ticktext
            fig.layout.title.text = f"{s.concepts[0]}: total {float(s.scores.sum()):.2f}"
        status.value = ""
        return s

    def generate(*_):
        try:
            g = guided_generate(model, prompt_box.value, get_concept(concept_box.value), k=k_slider.value,
                                max_new_tokens=steps.value, direction=direction.value)
        except InputError as e:
            status.value = f"<span style='color:#c00'>{html.escape(str(e))}</span>"
            return None
        output.value = g._repr_html_()
        status.value = f"{len(g.guided_tokens)} tokens at {g.tokens_per_s:.1f} tok/s"
        return g

    text_box.observe(score, names="value")
    concept_box.observe(score, names="value")
    button.on_click(generate)
    fig.layout.title.text = f"{first.concepts[0]}: total {float(first.scores.sum()):.2f}"
    fig.resync()
    box = widgets.VBox([wrap_row([concept_box]), text_box, fig, status,
                        widgets.HTML("<b>Concept-guided decoding</b> (guided vs greedy)"), prompt_box,
                        wrap_row([k_slider, steps]), direction, button, output])
    box.figure, box.text, box.concept, box.prompt = fig, text_box, concept_box, prompt_box
    box.k_slider, box.direction, box.steps, box.generate_button = k_slider, direction, steps, button
    box.output, box.status = output, status
    box.score, box.generate = score, generate
    return box


__all__ = ["frames_explorer", "DEFAULT_CONCEPTS"]
