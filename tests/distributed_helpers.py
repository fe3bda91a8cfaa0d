"""Workers for the torch.distributed tests: the synthetic trainer run, and a torchrun entry point (main)."""

import torch

STEPS = 30


def synthetic_batches(global_batch: int, d: int = 16, n_feat: int = 24, seed: int = 0):
    """Endless (x, y) global batches of a sparse synthetic MLP (the same on every process)."""
    g = torch.Generator().manual_seed(seed)
    E = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=g), dim=-1)
    D = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=g), dim=-1)
    while True:
        a = (torch.rand(global_batch, n_feat, generator=g) < 0.08) * (0.5 + torch.rand(global_batch, n_feat, generator=g))
        x = a @ E
        yield x, torch.relu(x @ E.T - 0.3) @ D


def train(cfg_dict: dict, ctx) -> dict:
    """Train one transcoder for cfg.total_steps on this rank's slice of each global batch."""
    from probes.transcoders.config import TranscoderTrainingConfig
    from probes.transcoders.train import TranscoderTrainer

    cfg = TranscoderTrainingConfig.from_dict(cfg_dict)
    tr = TranscoderTrainer(cfg, comm=ctx)
    local = ctx.local_batch(cfg.batch_size)
    lo = ctx.rank * local
    resampled = aux = 0
    for _, (x, y) in zip(range(cfg.total_steps), synthetic_batches(cfg.batch_size)):
        m = tr.step(x[lo:lo + local], y[lo:lo + local])
        resampled += int(m.get("resampled", 0))
        aux += int("aux" in m)
    out = {n: p.detach().clone() for n, p in tr.tc.named_parameters()}
    out["last_fired"] = tr.last_fired.float()
    out["resampled"] = torch.tensor([float(resampled)])
    out["aux_steps"] = torch.tensor([float(aux)])
    out["tokens"] = torch.tensor([float(tr.tokens)])
    out["final_loss"] = torch.tensor([tr.history[-1]["loss"]])
    return out


def main(argv) -> None:
    """Under torchrun: ``distributed_helpers.py OUT CONFIGS_JSON -- SCRIPT_ARGS``. Trains every synthetic
    config (``{OUT}.{name}.rank{r}``), then runs ``scripts/train_distributed.py`` with SCRIPT_ARGS in the
    same process group, so the processes (and their imports) are started once."""
    import json
    import sys
    from pathlib import Path

    from safetensors.torch import save_file
    from workbench.distributed import init_distributed

    out_path, cfgs, script_args = argv[0], json.loads(argv[1]), argv[argv.index("--") + 1:]
    torch.set_num_threads(1)
    ctx = init_distributed("gloo", timeout_s=120)
    for name, cfg in cfgs.items():
        out = train(cfg, ctx)
        save_file({k: v.contiguous() for k, v in out.items()}, f"{out_path}.{name}.rank{ctx.rank}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import train_distributed
    train_distributed.main(script_args)  # joins the same process group and leaves it at the end


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
