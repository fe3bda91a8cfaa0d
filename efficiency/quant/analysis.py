"""Why quantization breaks: which tokens and layers carry the error, and how a rotation spreads the outlier.

``quantization_error(model, method, text)`` -> ``QuantErrorResult``: the quantized model against its float
twin (the same rotation without quantization, so the two live in the same residual basis; the plain model
for unrotated methods), on one text, per token and layer:

- ``resid_error`` (L, T): ``‖r_q - r_f‖ / ‖r_f‖`` of the residual stream after every block (the error that
  has propagated so far);
- ``input_error`` {site: (L, T)}: the *local* error of the per-token activation grid on the float twin's
  inputs of the linears (``attn_in`` for q/k/v, ``z`` for o_proj, ``mlp_in`` for gate/up, ``mlp_hidden``
  for down_proj, through the online Hadamard when the method has one): ``‖Q(x) - x‖ / ‖x‖``, i.e. which
  tokens the grid itself represents badly (only for methods that quantize activations);
- ``kl`` (T,): next-token KL(p_float ‖ p_quant) at each position, and whether the top-1 token is the same.

Position 0 is the attention sink on SmolLM2 (no BOS token): from block 11 on its residual carries a
~2·10⁴ value in dimension 507, and after the norm it is nearly one-hot. ``by_layer()`` sets it against the
other tokens.

``rotation_spread(model, text, rotations)`` -> ``RotationSpreadResult``: the normalized inputs of the linears
(``attn_in`` or ``mlp_in``, gain-free: the rows a rotated model quantizes) under no rotation, a randomized
Hadamard, a random orthogonal matrix (or any given ones, e.g. DFRot's refined rotation): per token and layer
the *flatness* ``max|x_i| / rms(x)`` (√d = 24 for a one-hot vector on SmolLM2, ≈ 3-4 for a Gaussian one) and
the per-token quantization error at ``bits``, and the coordinates of the sink and of a typical token before
and after, to see the outlier spread.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.errors import InputError
from workbench.result import Result

from .grids import check_act_bits, token_error
from .hadamard import KroneckerHadamard
from .rotation import residual_rotation

SITES = ("attn_in", "z", "mlp_in", "mlp_hidden")
SITE_LINEARS = {"attn_in": "q, k, v", "z": "o", "mlp_in": "gate, up", "mlp_hidden": "down"}
SINK_COLOR, OTHER_COLOR = "#d62728", "#1f77b4"


def _tokens(model, text, max_tokens: int):
    if not isinstance(text, str) or not text:
        raise InputError("Give one non-empty text.")
    ids, lengths = model.tokenize(text)
    if lengths[0] < 2:
        raise InputError("The text needs at least 2 tokens (the sink and one more).")
    if lengths[0] > max_tokens:
        raise InputError(f"The text has {lengths[0]} tokens, more than max_tokens={max_tokens}; shorten it or raise "
                         "max_tokens= (captures of every layer grow with the length).")
    return ids


def _kl(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    lp, lq = torch.log_softmax(ref_logits.double(), -1), torch.log_softmax(logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


# ------------------------------------------------------------------------------------------ error per token
@dataclass(repr=False)
class QuantErrorResult(Result):
    """Per-token, per-layer error of a quantized model against its float twin (see the module docstring).

    resid_error: (L, T); input_error: {site: (L, T)} (empty for weight-only methods); kl: (T,);
    top1_same: (T,) bool; str_tokens: T strings; sink: the sink's position (0)."""

    method: str
    str_tokens: list[str]
    resid_error: np.ndarray
    kl: np.ndarray
    top1_same: np.ndarray
    input_error: dict = field(default_factory=dict)
    sink: int = 0
    a_bits: int | None = None

    @property
    def n_layers(self) -> int:
        return self.resid_error.shape[0]

    def _others(self) -> np.ndarray:
        return np.array([i for i in range(len(self.str_tokens)) if i != self.sink])

    def by_layer(self) -> pd.DataFrame:
        """Per layer: residual error of the sink and of the other tokens (median, mean), and the same for the
        local input error of every site."""
        o = self._others()
        rows = []
        for l in range(self.n_layers):
            r = {"layer": l, "resid_sink": float(self.resid_error[l, self.sink]),
                 "resid_others_median": float(np.median(self.resid_error[l, o])),
                 "resid_others_mean": float(self.resid_error[l, o].mean())}
            for s, e in self.input_error.items():
                r[f"{s}_sink"] = float(e[l, self.sink])
                r[f"{s}_others_mean"] = float(e[l, o].mean())
            rows.append(r)
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        L, T = self.resid_error.shape
        df = pd.DataFrame({"layer": np.repeat(np.arange(L), T), "position": np.tile(np.arange(T), L),
                           "token": self.str_tokens * L, "sink": np.tile(np.arange(T) == self.sink, L),
                           "resid_error": self.resid_error.reshape(-1)})
        for s, e in self.input_error.items():
            df[f"{s}_error"] = e.reshape(-1)
        return df

    def summary(self) -> str:
        o = self._others()
        last = self.n_layers - 1
        return (f"{self.method}: next-token KL {self.kl[o].mean():.4f} (mean over tokens), top-1 kept "
                f"{self.top1_same.mean():.0%}; residual error after the last block: sink {self.resid_error[last, self.sink]:.3g}"
                f", others median {np.median(self.resid_error[last, o]):.3g}")

    def figure(self, kind: str = "layers"):
        """kind "layers": error per layer, sink against the others; "heatmap": residual error, layer × position
        (log10); "kl": next-token KL per position."""
        if kind == "heatmap":
            fig = go.Figure(go.Heatmap(z=np.log10(np.maximum(self.resid_error, 1e-12)), colorscale="Viridis",
                                       x=[f"{i}:{t!r}" for i, t in enumerate(self.str_tokens)],
                                       colorbar={"title": "log10 rel. err"}))
            fig.update_layout(title=f"{self.method}: residual error after each block, per token", xaxis_title="position",
                              yaxis_title="layer", height=460)
            return fig
        if kind == "kl":
            fig = go.Figure(go.Bar(x=list(range(len(self.kl))), y=self.kl,
                                   marker_color=[SINK_COLOR if i == self.sink else OTHER_COLOR for i in range(len(self.kl))],
                                   hovertext=self.str_tokens))
            fig.update_layout(title=f"{self.method}: next-token KL(float ‖ quantized) per position", xaxis_title="position",
                              yaxis_title="KL (nats)", height=380)
            return fig
        if kind != "layers":
            raise InputError(f"kind must be 'layers', 'heatmap' or 'kl', got {kind!r}.")
        df = self.by_layer()
        n = 2 if self.input_error else 1
        titles = ["residual stream: relative error after each block"] + (
            [f"linear inputs: per-token A{self.a_bits} grid error (local)"] if n == 2 else [])
        fig = make_subplots(rows=1, cols=n, subplot_titles=titles)
        fig.add_scatter(x=df.layer, y=df.resid_sink, name="sink (position 0)", line={"color": SINK_COLOR}, row=1, col=1)
        fig.add_scatter(x=df.layer, y=df.resid_others_median, name="other tokens (median)", line={"color": OTHER_COLOR},
                        row=1, col=1)
        dashes = {"attn_in": "solid", "z": "dot", "mlp_in": "dash", "mlp_hidden": "dashdot"}
        for s in self.input_error:
            fig.add_scatter(x=df.layer, y=df[f"{s}_sink"], name=f"sink: {s} → {SITE_LINEARS[s]}",
                            line={"color": SINK_COLOR, "dash": dashes[s]}, row=1, col=2)
            fig.add_scatter(x=df.layer, y=df[f"{s}_others_mean"], name=f"others: {s} → {SITE_LINEARS[s]}",
                            line={"color": OTHER_COLOR, "dash": dashes[s]}, row=1, col=2)
        fig.update_yaxes(type="log")
        fig.update_xaxes(title_text="layer")
        fig.update_layout(title=f"Where {self.method} breaks: the sink token against the rest", height=430)
        return fig


def quantization_error(model, method, text: str, max_tokens: int = 512) -> QuantErrorResult:
    """Run ``text`` through the float twin and the quantized model of ``method`` (module docstring).

    method: an efficiency method with ``intervention(model)`` (calibrated already if it needs it)."""
    ids = _tokens(model, text, max_tokens)
    iv = method.intervention(model)
    if iv is None:
        raise InputError(f"{method.label} changes no weights or activations (a cache-only method): nothing to compare "
                         "in a forward pass.")
    twin = method.float_twin(model) if hasattr(method, "float_twin") else None
    a_bits = getattr(method, "a_bits", None)
    L = model.info.n_layers
    sites = list(SITES) if a_bits is not None else []
    with model.intervene(twin) if twin is not None else nullcontext():
        ref = model.run(ids, capture=["resid_post"] + sites)
        W = model.weights()
    q = model.run(ids, capture=["resid_post"], interventions=[iv])
    resid = np.stack([((q["resid_post", l] - ref["resid_post", l]).norm(dim=-1)
                       / ref["resid_post", l].norm(dim=-1).clamp_min(1e-30))[0].double().numpy() for l in range(L)])
    inputs = {}
    if a_bits is not None:
        T = KroneckerHadamard(model.info.d_mlp, dtype=torch.float32, device=model.device) if method.online_had else None
        for s in sites:
            errs = []
            for l in range(L):
                x = ref[s, l][0].float()
                if s == "z":
                    x = x.reshape(x.shape[0], -1)
                norm = W.layers[l].ln1 if s == "attn_in" else W.layers[l].ln2 if s == "mlp_in" else None
                if norm is not None and norm.w is not None:
                    x = x * norm.w.float()
                if norm is not None and norm.b is not None:
                    x = x + norm.b.float()
                if s == "mlp_hidden" and T is not None:
                    x = T(x)
                errs.append(token_error(x, a_bits, method.a_sym, method.a_clip).double().cpu().numpy())
            inputs[s] = np.stack(errs)
    kl = _kl(ref.logits[0], q.logits[0]).cpu().numpy()
    same = (ref.logits[0].argmax(-1) == q.logits[0].argmax(-1)).cpu().numpy()
    return QuantErrorResult(method.label, ref.str_tokens[0], resid, kl, same, inputs, 0, a_bits)


# ------------------------------------------------------------------------------------------ rotation spread
@dataclass(repr=False)
class RotationSpreadResult(Result):
    """How rotations spread outliers of the linears' normalized inputs (see the module docstring).

    flatness, error: (R, L, T); coords: (R, 2, d) coordinates of the sink and of the typical token at
    ``show_layer`` (the token with the median flatness there)."""

    rotations: list[str]
    site: str
    bits: int
    sym: bool
    str_tokens: list[str]
    flatness: np.ndarray
    error: np.ndarray
    coords: np.ndarray
    show_layer: int
    typical: int
    sink: int = 0

    def to_frame(self) -> pd.DataFrame:
        R, L, T = self.error.shape
        rows = []
        for r in range(R):
            for l in range(L):
                o = [i for i in range(T) if i != self.sink]
                rows.append({"rotation": self.rotations[r], "layer": l,
                             "flatness_sink": float(self.flatness[r, l, self.sink]),
                             "flatness_others": float(self.flatness[r, l, o].mean()),
                             "error_sink": float(self.error[r, l, self.sink]),
                             "error_others": float(self.error[r, l, o].mean())})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        df = self.to_frame()
        late = df[df.layer >= df.layer.max() // 2].groupby("rotation", sort=False)[["error_sink", "error_others"]].mean()
        parts = [f"{r}: sink {row.error_sink:.3f}, others {row.error_others:.3f}" for r, row in late.iterrows()]
        return f"A{self.bits} per-token error of {self.site} (second half of the layers) — " + "; ".join(parts)

    def figure(self, kind: str = "coordinates"):
        """kind "coordinates": the sink's and a typical token's coordinates at ``show_layer`` under each rotation;
        "layers": per-token quantization error per layer, sink against the rest, for each rotation."""
        R = len(self.rotations)
        if kind == "coordinates":
            fig = make_subplots(rows=1, cols=R, subplot_titles=self.rotations, shared_yaxes=True)
            d = self.coords.shape[-1]
            for r in range(R):
                fig.add_scatter(x=np.arange(d), y=self.coords[r, 1], mode="markers", marker={"color": OTHER_COLOR, "size": 3},
                                name=f"typical token ({self.typical}: {self.str_tokens[self.typical]!r})", showlegend=r == 0,
                                row=1, col=r + 1)
                fig.add_scatter(x=np.arange(d), y=self.coords[r, 0], mode="markers", marker={"color": SINK_COLOR, "size": 3},
                                name="sink (position 0)", showlegend=r == 0, row=1, col=r + 1)
            fig.update_xaxes(title_text="coordinate")
            fig.update_layout(title=f"{self.site} at layer {self.show_layer}: coordinates before and after rotation "
                                    f"(float model; norm √d for every token)", height=420)
            return fig
        if kind != "layers":
            raise InputError(f"kind must be 'coordinates' or 'layers', got {kind!r}.")
        df = self.to_frame()
        fig = go.Figure()
        palette = ["#444", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
        for i, r in enumerate(self.rotations):
            sub = df[df.rotation == r]
            c = palette[i % len(palette)]
            fig.add_scatter(x=sub.layer, y=sub.error_sink, name=f"{r}: sink", line={"color": c, "width": 3})
            fig.add_scatter(x=sub.layer, y=sub.error_others, name=f"{r}: others", line={"color": c, "dash": "dot"})
        fig.update_layout(title=f"Per-token {'symmetric' if self.sym else 'asymmetric'} {self.bits}-bit error of {self.site} "
                                "by layer (float model, no weight quantization)", xaxis_title="layer",
                          yaxis_title="‖Q(x) − x‖ / ‖x‖", height=420)
        return fig


def rotation_spread(model, text: str, rotations=("none", "rh", "ro"), site: str = "attn_in", bits: int = 4,
                    sym: bool = True, seed: int = 0, show_layer: int | None = None, max_tokens: int = 512) -> RotationSpreadResult:
    """Flatness and per-token error of the normalized linear inputs under each rotation (module docstring).

    rotations: names ("none", "rh", "ro") and/or a dict {name: (d, d) orthogonal matrix} (e.g. DFRot's).
    show_layer: the layer whose coordinates are shown (default: the one where the sink is flattest... i.e. most
    one-hot, its largest max/rms)."""
    if site not in ("attn_in", "mlp_in"):
        raise InputError(f"site must be 'attn_in' or 'mlp_in' (the normalized residual), got {site!r}.")
    check_act_bits(bits)
    ids = _tokens(model, text, max_tokens)
    d, L = model.info.d_model, model.info.n_layers
    mats = {}
    for name, R in (rotations.items() if isinstance(rotations, dict) else ((r, None) for r in rotations)):
        if R is None:
            R = torch.eye(d, dtype=torch.float64) if name == "none" else residual_rotation(d, name, seed).matrix()
        if tuple(R.shape) != (d, d):
            raise InputError(f"Rotation {name!r} must be ({d}, {d}), got {tuple(R.shape)}.")
        mats[name] = R.double()
    run = model.run(ids, capture=[site], logits=None)
    X = torch.stack([run[site, l][0] for l in range(L)]).double()  # (L, T, d)
    flat, err = [], []
    for R in mats.values():
        Y = X @ R.to(X.device)
        flat.append((Y.abs().amax(-1) / Y.pow(2).mean(-1).sqrt()).cpu().numpy())
        err.append(token_error(Y, bits, sym).cpu().numpy())
    flat, err = np.stack(flat), np.stack(err)
    T = X.shape[1]
    if show_layer is None:
        show_layer = int(np.argmax(flat[0, :, 0]))
    others = [i for i in range(T) if i != 0]
    typical = others[int(np.argsort(flat[0, show_layer, others])[len(others) // 2])] if others else 0
    coords = np.stack([np.stack([(X[show_layer, 0] @ R.to(X.device)).cpu().numpy(),
                                 (X[show_layer, typical] @ R.to(X.device)).cpu().numpy()]) for R in mats.values()])
    return RotationSpreadResult(list(mats), site, bits, sym, run.str_tokens[0], flat, err, coords, show_layer, typical)
