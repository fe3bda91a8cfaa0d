"""The attention explorer: an interactive notebook view (ipywidgets 8 + a plotly FigureWidget, which needs anywidget)."""
from __future__ import annotations


from .errors import InputError
from .view_layout import pattern_figure, wrap_row

DEFAULT_MAX_TOKENS = 256


def attention_explorer(model, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS):
    """A layer slider and a head dropdown over one prompt's attention patterns.

    All layers' patterns are captured once (one forward pass); moving the controls only swaps the
    heatmap's data inside ``FigureWidget.batch_update``, so nothing is recomputed or redrawn from
    scratch. The head dropdown also offers the mean over heads. Returns an ``ipywidgets.VBox``
    with ``.figure``, ``.layer_slider``, ``.head_dropdown``, ``.patterns`` (L, H, T, T numpy)
    and ``.show(layer, head)`` (``head=None`` for the mean) for scripted use.

    Prompts longer than ``max_tokens`` are refused: the full patterns grow as T^2 per head and
    layer, and a heatmap of more than a few hundred tokens is unreadable anyway.
    """
    import ipywidgets as widgets
    from .figure_widget import FigureWidget  # plotly.js loaded once per page

    if not isinstance(prompt, str):
        raise InputError("attention_explorer takes one prompt string.")
    tokens, lengths = model.tokenize(prompt)
    t = lengths[0]
    if t > max_tokens:
        raise InputError(
            f"The prompt has {t} tokens, more than max_tokens={max_tokens} for the attention explorer "
            f"(it keeps all {model.info.n_layers} layers x {model.info.n_heads} heads of T x T patterns). "
            "Shorten the prompt, raise max_tokens=, or use model.run(..., attention='summary') for long prompts."
        )
    run = model.run(prompt, capture=["pattern"], logits=None)
    patterns = run.stack("pattern")[:, 0].float().cpu().numpy()  # (L, H, T, T)
    str_tokens = run.str_tokens[0]
    n_layers, n_heads = patterns.shape[:2]
    mean = patterns.mean(axis=1)  # (L, T, T)

    def title(layer: int, head: int | None) -> str:
        return f"Layer {layer}, {'mean over heads' if head is None else f'head {head}'}"

    fig = FigureWidget(pattern_figure(patterns[0, 0], str_tokens, title(0, 0)))
    slider = widgets.IntSlider(value=0, min=0, max=n_layers - 1, step=1, description="layer",
                               continuous_update=True)
    options = [(f"head {h}", h) for h in range(n_heads)] + [("mean over heads", -1)]
    dropdown = widgets.Dropdown(options=options, value=0, description="head")

    def show(layer: int, head: int | None) -> None:
        z = mean[layer] if head is None or head < 0 else patterns[layer, head]
        with fig.batch_update():
            fig.data[0].z = z
            fig.layout.title.text = title(layer, None if head is None or head < 0 else head)

    def on_change(_change) -> None:
        show(slider.value, dropdown.value)

    slider.observe(on_change, names="value")
    dropdown.observe(on_change, names="value")
    fig.resync()
    box = widgets.VBox([wrap_row([slider, dropdown]), fig])
    box.figure = fig
    box.layer_slider = slider
    box.head_dropdown = dropdown
    box.patterns = patterns
    box.str_tokens = str_tokens
    box.show = show
    return box


__all__ = ["attention_explorer", "DEFAULT_MAX_TOKENS"]
