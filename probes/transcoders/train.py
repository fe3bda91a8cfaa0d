"""Train transcoders from any iterator of (input, target) batches.

The trained object *is* an SAELens transcoder (``Transcoder``, ``SkipTranscoder``,
``JumpReLUTranscoder``, or the registered ``TopKTranscoder``); SAELens has no transcoder trainer
(its issue #182), so the loop is here, reusing SAELens's TopK and JumpReLU/Step autograd functions.

Data provider: ``Iterator[tuple[x (B, d_in), y (B, d_out)]]``, e.g.
``probes.transcoders.harvest.layer_pairs(model, layer)``; for an SAE pass (y, y).

Per step: loss (see ``TranscoderTrainingConfig``), non-finite check (stop, keep the last good
state and checkpoint), backward, removal of the gradient component parallel to each decoder row,
Adam, decoder rows renormalised to unit norm, dead-feature bookkeeping (AuxK or resampling).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from sae_lens.saes.jumprelu_sae import JumpReLU, Step
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.transcoder import Transcoder

from workbench.errors import InputError, WorkbenchError
from workbench.progress import progress

from .architectures import build_transcoder
from .checkpoint import STATE, load_training_state, read_metadata, save_transcoder
from .config import TranscoderTrainingConfig


class TrainingDivergedError(WorkbenchError, FloatingPointError):
    """The loss or a gradient became NaN/inf; the trainer keeps its last good state."""

    def __init__(self, msg: str, step: int, checkpoint: Path | None):
        super().__init__(msg)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    """What ``train_transcoder`` returns: the transcoder, its per-step log and timings."""
    transcoder: Transcoder
    history: pd.DataFrame
    seconds: float
    steps: int
    tokens: int
    checkpoint: Path | None = None

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        h = self.history
        fig = make_subplots(rows=1, cols=3, subplot_titles=("normalised MSE", "L0", "dead features"))
        for i, col in enumerate(("mse", "l0", "dead"), 1):
            fig.add_trace(go.Scatter(x=h["step"], y=h[col], name=col), row=1, col=i)
        fig.update_layout(height=300, showlegend=False, title=f"Training ({self.steps} steps, {self.seconds:.0f} s)")
        return fig

    def to_frame(self) -> pd.DataFrame:
        return self.history

    def _repr_html_(self) -> str:
        last = self.history.iloc[-1] if len(self.history) else {}
        return (f"<b>TrainResult</b>: {type(self.transcoder).__name__} d_sae={self.transcoder.cfg.d_sae}, "
                f"{self.steps} steps, {self.tokens:,} tokens, {self.seconds:.1f} s; last normalised MSE "
                f"{last.get('mse', float('nan')):.3f}, L0 {last.get('l0', float('nan')):.1f}")


class TranscoderTrainer:
    """Holds one transcoder, its optimizer and training state; ``step(x, y)`` trains one batch."""

    def __init__(self, cfg: TranscoderTrainingConfig, metadata: dict[str, Any] | None = None, comm=None,
                 device=None):
        self.cfg = cfg
        # where parameters, optimizer state and each step's math live (batches are moved there);
        # the initial weights are drawn on the CPU, so they do not depend on the device
        self.device = torch.device("cpu" if device is None else device)
        # data parallelism: a ``workbench.distributed.DistContext`` (or None for one process). Each
        # rank steps on its slice of the global batch; the first-batch statistics, the loss metrics,
        # the gradients and the fired-feature mask are averaged / united over ranks, so every rank
        # holds the same parameters as one process stepping on the whole global batch.
        self.comm = comm
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            self.tc = build_transcoder(cfg.d_in, cfg.d_sae, cfg.d_out, cfg.activation, cfg.skip, cfg.k,
                                       metadata=metadata)
            with torch.no_grad():
                self.tc.W_dec.div_(self.tc.W_dec.norm(dim=1, keepdim=True))
        if self.device.type != "cpu":
            self.tc.to(self.device)
        self.log_threshold = None
        params = [p for n, p in self.tc.named_parameters() if n != "threshold"]
        if cfg.activation == "jumprelu":
            self.tc.threshold.requires_grad_(False)
            self.log_threshold = torch.nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold),
                                                               device=self.device))
            params.append(self.log_threshold)
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=True)  # one kernel per tensor
        self.n_steps = 0
        self.tokens = 0
        self.last_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=self.device)
        self.scale = torch.zeros((), device=self.device)  # frozen mean ‖y − ȳ‖² of the first batch (0: not yet set)
        self.history: list[dict[str, float]] = []
        self.seconds = 0.0

    # ------------------------------------------------------------------ math
    def _lr(self) -> float:
        c, s = self.cfg, self.n_steps
        f = min(1.0, (s + 1) / c.lr_warmup_steps) if c.lr_warmup_steps else 1.0
        decay_start = c.total_steps * (1 - c.lr_decay_fraction)
        if c.lr_decay_fraction > 0 and s >= decay_start:
            f *= max(0.0, (c.total_steps - s) / (c.total_steps - decay_start))
        return c.lr * f

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(pre (B, d_sae), z (B, d_sae), l0 term or None) with training-time gradients."""
        tc, c = self.tc, self.cfg
        pre = x @ tc.W_enc + tc.b_enc
        if c.activation == "relu":
            return pre, torch.relu(pre), None
        if c.activation == "topk":
            vals, idx = torch.topk(pre, c.k, dim=-1, sorted=False)
            return pre, torch.zeros_like(pre).scatter(-1, idx, vals.relu()), None
        theta = self.log_threshold.exp()
        z = JumpReLU.apply(torch.relu(pre), theta, c.jumprelu_bandwidth, False)
        l0 = Step.apply(pre, theta, c.jumprelu_bandwidth, False).sum(-1).mean()
        return pre, z, l0

    def _decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = z @ self.tc.W_dec + self.tc.b_dec
        if self.cfg.skip:
            out = out + x @ self.tc.W_skip.T
        return out

    def _aux_loss(self, pre, y, y_hat, dead) -> torch.Tensor:
        """AuxK (TopK only): the top dead pre-activations reconstruct the detached residual."""
        n_dead = int(dead.sum())
        k_aux = min(self.cfg.aux_k, n_dead)
        err = (y - y_hat).detach()
        vals, idx = torch.topk(pre[:, dead], k_aux, dim=-1, sorted=False)
        acts = torch.zeros(pre.shape[0], n_dead, dtype=pre.dtype, device=pre.device).scatter(-1, idx, vals.relu())
        with torch.autocast(pre.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast):
            err_hat = (acts @ self.tc.W_dec[dead]).float()
        return ((err_hat - err) ** 2).sum(-1).mean() / self.scale * min(n_dead / self.cfg.aux_k, 1.0)

    @torch.no_grad()
    def _resample(self, x, y, y_hat, dead) -> int:
        """Reset dead features to high-error examples of this batch (Anthropic-style resampling)."""
        ids = dead.nonzero().flatten()
        if ids.numel() == 0:
            return 0
        tc = self.tc
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + self.n_steps)
        err = ((y - y_hat) ** 2).sum(-1)
        pick = torch.multinomial((err / err.sum()).cpu(), ids.numel(), replacement=True, generator=g).to(err.device)
        live = ~dead
        enc_norm = tc.W_enc[:, live].norm(dim=0).mean() if live.any() else torch.tensor(1.0, device=tc.W_enc.device)
        resid = (y - y_hat)[pick]
        tc.W_dec[ids] = resid / resid.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        xin = x[pick]
        tc.W_enc[:, ids] = (xin / xin.norm(dim=-1, keepdim=True).clamp_min(1e-8)).T * 0.2 * enc_norm
        tc.b_enc[ids] = 0.0
        for p, sl in ((tc.W_dec, (ids,)), (tc.W_enc, (slice(None), ids)), (tc.b_enc, (ids,))):
            st = self.opt.state.get(p)
            if st:
                st["exp_avg"][sl] = 0.0
                st["exp_avg_sq"][sl] = 0.0
        self.last_fired[ids] = self.n_steps
        return ids.numel()

    # ------------------------------------------------------------------ one step
    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Train on one batch x (B, d_in), y (B, d_out). Raises TrainingDivergedError on NaN/inf,
        leaving the parameters as they were before this step."""
        c, tc = self.cfg, self.tc
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise InputError(f"Expected batches x (B, d_in) and y (B, d_out), got {tuple(x.shape)} and {tuple(y.shape)}.")
        if x.shape[1] != c.d_in or y.shape[1] != c.d_out:
            raise InputError(f"Batch dimensions x {tuple(x.shape)}, y {tuple(y.shape)} do not match the transcoder "
                             f"(d_in={c.d_in}, d_out={c.d_out}).")
        x, y = x.to(self.device, torch.float32), y.to(self.device, torch.float32)
        t0 = time.perf_counter()
        if self.n_steps == 0 and float(self.scale) == 0.0:
            with torch.no_grad():
                mean = y.mean(0)
                self._mean_over_ranks(mean)  # the global batch's mean (equal slices per rank)
                sq = ((y - mean) ** 2).sum(-1).mean().reshape(1)
                self._mean_over_ranks(sq)
                tc.b_dec.copy_(mean)
                self.scale = sq.reshape(()).clamp_min(1e-12)
        lr = self._lr()
        for grp in self.opt.param_groups:
            grp["lr"] = lr
        # bf16 autocast (cfg.autocast): the matmuls run in bfloat16, parameters, Adam and the
        # losses stay float32 (the outputs are cast back before any reduction).
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=c.autocast):
            if c.activation == "topk":
                # sparse path: decode only the k active rows of W_dec (embedding_bag), the same
                # function as the dense z @ W_dec with about d_sae / k times fewer operations
                pre = x @ tc.W_enc + tc.b_enc
                vals, idx = torch.topk(pre, c.k, dim=-1, sorted=False)
                vals = vals.float().relu()
                y_hat = F.embedding_bag(idx, tc.W_dec, per_sample_weights=vals, mode="sum") + tc.b_dec
                if c.skip:
                    y_hat = y_hat + x @ tc.W_skip.T
                z, l0_term = None, None
            else:
                pre, z, l0_term = self._encode(x)
                y_hat = self._decode(z, x)
                z = z.float()
        pre, y_hat = pre.float(), y_hat.float()
        if z is None:
            active = vals > 0
            fired = torch.zeros(c.d_sae, dtype=torch.bool, device=x.device).index_fill_(0, idx[active], True)
            l0_now = float(active.sum(-1).float().mean())
        else:
            fired = (z > 0).any(0)
            l0_now = float((z > 0).float().sum(-1).mean())
        mse = ((y_hat - y) ** 2).sum(-1).mean() / self.scale
        loss = mse
        metrics: dict[str, float] = {}
        if c.activation == "relu":
            warm = min(1.0, (self.n_steps + 1) / c.l1_warmup_steps) if c.l1_warmup_steps else 1.0
            l1 = z.sum(-1).mean() / self.scale.sqrt()
            loss = loss + c.l1_coefficient * warm * l1
            metrics["l1"] = l1.item()
        elif c.activation == "jumprelu":
            loss = loss + c.l0_coefficient * l0_term
        dead = (self.n_steps - self.last_fired) >= c.dead_window
        if c.activation == "topk" and dead.any() and c.aux_coefficient > 0:
            aux = self._aux_loss(pre, y, y_hat, dead)
            loss = loss + c.aux_coefficient * aux
            metrics["aux"] = float(aux.detach())
        if self.comm is not None:
            with torch.no_grad():  # global metrics; every rank sees the same finiteness verdict
                glob = torch.stack([loss.detach(), mse.detach(), torch.tensor(l0_now, device=loss.device)]).float()
                self._mean_over_ranks(glob)
                fired_i = fired.to(torch.uint8)
                self.comm.all_reduce_max_(fired_i)
                fired = fired_i.bool()
            loss_v, mse_v, l0_now = glob.tolist()
        else:
            loss_v, mse_v = loss.item(), mse.item()
        if not math.isfinite(loss_v):
            self._diverged(f"loss is {loss_v}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for g in self.opt.param_groups for p in g["params"] if p.grad is not None]
        self._mean_over_ranks(grads)  # data-parallel all-reduce: mean of rank means = global mean
        if not torch.isfinite(torch.stack([gr.sum() for gr in grads]).sum()):  # NaN/inf survive a sum
            self.opt.zero_grad(set_to_none=True)
            self._diverged("a gradient is not finite")
        with torch.no_grad():
            w, g = tc.W_dec, tc.W_dec.grad
            g -= (g * w).sum(-1, keepdim=True) * w  # keep the update tangent to the unit sphere
        self.opt.step()
        with torch.no_grad():
            tc.W_dec.div_(tc.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            if self.log_threshold is not None:
                tc.threshold.copy_(self.log_threshold.exp())
        self.last_fired[fired] = self.n_steps
        self.n_steps += 1
        world = 1 if self.comm is None else self.comm.world_size
        self.tokens += x.shape[0] * world
        if (c.activation != "topk" and c.resample_until and self.n_steps % c.resample_every == 0
                and c.dead_window <= self.n_steps <= c.resample_until):
            xs, ys, yh = x, y, y_hat.detach()
            if world > 1:  # resampling draws from the whole global batch, identically on every rank
                xs, ys, yh = (self.comm.all_gather_cat(t) for t in (xs, ys, yh))
            metrics["resampled"] = self._resample(xs, ys, yh, (self.n_steps - 1 - self.last_fired) >= c.dead_window)
        self.seconds += time.perf_counter() - t0
        metrics.update(step=self.n_steps, loss=loss_v, mse=mse_v, l0=l0_now,
                       dead=int(((self.n_steps - self.last_fired) >= c.dead_window).sum()), lr=lr)
        if self.n_steps % c.log_every == 0 or self.n_steps == 1 or self.n_steps == c.total_steps:
            self.history.append(metrics)
        return metrics

    def _mean_over_ranks(self, tensors) -> None:
        if self.comm is not None:
            self.comm.all_reduce_mean_([tensors] if isinstance(tensors, torch.Tensor) else list(tensors))

    def _diverged(self, what: str) -> None:
        raise TrainingDivergedError(
            f"Training diverged at step {self.n_steps + 1}: {what}. The transcoder was left at its last good "
            f"state (after step {self.n_steps}); lower the learning rate (lr={self.cfg.lr}) or check the "
            "data for NaN/inf.", self.n_steps, None)

    # ------------------------------------------------------------------ state
    def transcoder(self) -> Transcoder:
        """The SAELens transcoder being trained (the live object, with metadata updated)."""
        md = self.tc.cfg.metadata.to_dict()
        md.update(training_step=self.n_steps, training_tokens=self.tokens, training_config=self.cfg.to_dict())
        self.tc.cfg.metadata = SAEMetadata(**md)
        return self.tc

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"last_fired": self.last_fired, "scale": self.scale.reshape(1)}
        if self.log_threshold is not None:
            out["log_threshold"] = self.log_threshold.detach()
        names = {id(p): n for n, p in self.tc.named_parameters()}
        if self.log_threshold is not None:
            names[id(self.log_threshold)] = "log_threshold"
        for p, st in self.opt.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                out[f"adam.{names[id(p)]}.{key}"] = st[key]
            out[f"adam.{names[id(p)]}.step"] = st["step"].reshape(1).float()
        return out

    def save(self, path: str | Path) -> Path:
        """Write a resumable checkpoint (SAELens transcoder folder + training state) atomically."""
        return save_transcoder(self.transcoder(), path, extra_state=self.state_tensors(),
                               extra_json={"step": self.n_steps, "tokens": self.tokens, "seconds": self.seconds,
                                           "config": self.cfg.to_dict(), "history": self.history})

    @classmethod
    def from_checkpoint(cls, path: str | Path, comm=None, device=None) -> "TranscoderTrainer":
        """Rebuild a trainer from ``save`` output; training continues from the saved step."""
        meta = read_metadata(path)
        tensors, js = load_training_state(path)
        cfg = TranscoderTrainingConfig.from_dict(js["config"])
        md = {k: v for k, v in meta.get("metadata", {}).items()
              if k not in ("training_step", "training_tokens", "training_config")}
        tr = cls(cfg, metadata=md, comm=comm, device=device)
        from safetensors.torch import load_file
        weights = load_file(str(Path(path) / "sae_weights.safetensors"))
        with torch.no_grad():
            for n, p in tr.tc.named_parameters():
                if weights[n].shape != p.shape:
                    raise InputError(f"Checkpoint {path}: {n} has shape {tuple(weights[n].shape)}, expected {tuple(p.shape)}.")
                p.copy_(weights[n].float())
            if tr.log_threshold is not None:
                tr.log_threshold.copy_(tensors["log_threshold"])
        tensors = {k: v.to(tr.device) for k, v in tensors.items()}
        tr.last_fired = tensors["last_fired"].long().clone()
        tr.scale = tensors["scale"].reshape(()).clone()
        names = dict(tr.tc.named_parameters())
        if tr.log_threshold is not None:
            names["log_threshold"] = tr.log_threshold
        for n, p in names.items():
            if f"adam.{n}.exp_avg" in tensors:
                tr.opt.state[p] = {"step": tensors[f"adam.{n}.step"].reshape(()).clone(),
                                   "exp_avg": tensors[f"adam.{n}.exp_avg"].clone(),
                                   "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].clone()}
        tr.n_steps, tr.tokens, tr.seconds = int(js["step"]), int(js["tokens"]), float(js.get("seconds", 0.0))
        tr.history = list(js.get("history", []))
        return tr


def _has_state(path: Path | None) -> bool:
    return path is not None and (Path(path) / STATE).exists()


def fit_many(trainers: dict[Any, TranscoderTrainer], data: Iterable[dict[Any, tuple[torch.Tensor, torch.Tensor]]],
             checkpoint_dirs: dict[Any, Path] | None = None, skip_consumed: bool = True,
             log=None) -> dict[Any, TrainResult]:
    """Train several transcoders from one stream of ``{key: (x, y)}`` batches (one harvest pass
    feeding several layers). Stops when every trainer reached ``total_steps`` or data runs out.

    skip_consumed: on resumed trainers, drop the batches they already trained on, so a resumed
    run on a reproducible (seeded) stream equals an uninterrupted one.
    """
    dirs = {k: Path(v) for k, v in (checkpoint_dirs or {}).items()}
    skip = min(t.n_steps for t in trainers.values()) if skip_consumed else 0
    t_start = time.perf_counter()
    n_batches = 0
    it: Iterator = iter(data)
    goal = max(t.cfg.total_steps for t in trainers.values())
    with progress(total=goal, initial=min(t.n_steps for t in trainers.values()), unit="step",
                  desc=f"train {len(trainers)} transcoder(s)") as bar:
        for i, batch in enumerate(it):
            n_batches += 1
            if i < skip:
                continue
            active = [k for k, t in trainers.items() if t.n_steps < t.cfg.total_steps]
            if not active:
                break
            bar.update(1)
            for k in active:
                tr = trainers[k]
                if k not in batch:
                    raise InputError(f"The data stream has no batch for {k!r} (keys {list(batch)}).")
                try:
                    m = tr.step(*batch[k])
                except TrainingDivergedError as e:
                    ck = dirs.get(k)
                    kept = ck if _has_state(ck) else None
                    raise TrainingDivergedError(
                        str(e) + (f" Last good checkpoint kept at {kept} (step "
                                  f"{json_step(kept)})." if kept else " No checkpoint had been written."),
                        e.step, kept) from None
                if log is not None and (tr.n_steps % tr.cfg.log_every == 0 or tr.n_steps == tr.cfg.total_steps):
                    log(f"[{k}] step {m['step']} loss {m['loss']:.4f} mse {m['mse']:.4f} l0 {m['l0']:.1f} "
                        f"dead {m['dead']} lr {m['lr']:.2e} ({time.perf_counter() - t_start:.0f} s)")
                ce = tr.cfg.checkpoint_every
                if k in dirs and ce and tr.n_steps % ce == 0 and tr.n_steps < tr.cfg.total_steps:
                    tr.save(dirs[k])
    if n_batches == 0:
        raise InputError("The data provider yielded no batches (empty corpus?): nothing to train on.")
    out = {}
    for k, tr in trainers.items():
        if tr.n_steps == 0:
            raise InputError(f"Trainer {k!r} got no training batch (only {n_batches} batches, {skip} skipped).")
        ck = tr.save(dirs[k]) if k in dirs else None
        h = pd.DataFrame(tr.history)
        out[k] = TrainResult(tr.transcoder(), h, tr.seconds, tr.n_steps, tr.tokens, ck)
    return out


def json_step(path: Path) -> int | None:
    import json
    try:
        return int(json.loads((Path(path) / "training_state.json").read_text())["step"])
    except (OSError, KeyError, ValueError):
        return None


def train_transcoder(data: Iterable[tuple[torch.Tensor, torch.Tensor]], cfg: TranscoderTrainingConfig,
                     checkpoint_dir: str | Path | None = None, resume: bool = True, metadata: dict[str, Any] | None = None,
                     skip_consumed: bool = True, log=None) -> TrainResult:
    """Train one transcoder on (x, y) batches; returns a ``TrainResult``.

    checkpoint_dir: where checkpoints go (every ``cfg.checkpoint_every`` steps and at the end);
    with resume=True and a checkpoint there, training continues from its step (the config
    saved in the checkpoint must equal ``cfg``). metadata: SAELens metadata (model name,
    fingerprint, hook names, layer) stored with the weights.
    """
    ck = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and _has_state(ck):
        tr = TranscoderTrainer.from_checkpoint(ck)
        if tr.cfg.to_dict() != cfg.to_dict():
            diff = {k: (v, cfg.to_dict()[k]) for k, v in tr.cfg.to_dict().items() if cfg.to_dict()[k] != v}
            raise InputError(f"The checkpoint at {ck} was trained with a different config {diff} (saved, given); "
                             "pass resume=False to start over, or the same config to continue.")
    else:
        tr = TranscoderTrainer(cfg, metadata=metadata)
    res = fit_many({0: tr}, ({0: b} for b in data), {0: ck} if ck else None, skip_consumed=skip_consumed, log=log)
    return res[0]


def model_metadata(model, layer: int) -> dict[str, Any]:
    """SAELens metadata for a transcoder replacing ``model``'s MLP at ``layer``."""
    from .harvest import hook_names
    hi, ho = hook_names(layer)
    return {"model_name": model.info.name, "model_fingerprint": model.fingerprint, "hook_name": hi,
            "hook_name_out": ho, "hook_layer": layer, "prepend_bos": False, "context_size": 128}
