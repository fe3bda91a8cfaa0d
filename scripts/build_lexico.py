"""Learn Lexico's per-layer key and value dictionaries for the bundled SmolLM2 (offline, one command).

    python scripts/build_lexico.py [--atoms 512] [--sparsity 8] [--iterations 6] [--train-tokens 4096]
                                   [--out efficiency/data/lexico/smollm2-n512] [--threads 1]

1. Training vectors: the model's cached keys (after RoPE) and values, every layer and KV head, on
   windows of ``--window`` tokens cut from the *train* split of the bundled corpus, ``--train-tokens``
   tokens in all (×3 KV heads = vectors per dictionary).
2. Held-out vectors, never trained on: the corpus's *eval* split (in-domain) and Python reference
   topics from ``pydoc_data`` (``long_texts``; out-of-domain), ``--eval-tokens`` tokens each.
3. Per layer, for K and for V: MOD dictionary learning (``LexicoDictionary`` docstring) with
   ``--atoms`` atoms at OMP sparsity ``--sparsity``; then the mean relative reconstruction error
   ||x - x̂|| / ||x|| on train, in-domain and out-of-domain vectors at s = 4, 8, 14.
4. Writes ``<out>.safetensors`` (float16 atoms) and ``<out>.json`` (model fingerprint, settings,
   errors per layer); per-layer progress is kept in ``<out>.partial/`` so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def corpus_texts(split: str) -> list[str]:
    try:  # the corpus is moving to workbench.texts
        from workbench.texts import load_corpus  # type: ignore
    except ImportError:
        from probes.transcoders import load_corpus
    return load_corpus(split)


def windows(model, texts: list[str], n_tokens: int, window: int) -> list:
    """Token windows (1, window) from the joined texts, spread evenly, ``n_tokens`` tokens in all."""
    import torch

    ids = model.tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n = max(1, n_tokens // window)
    if len(ids) < window:
        raise SystemExit(f"the text has only {len(ids)} tokens, fewer than one window of {window}")
    step = max(window, (len(ids) - window) // max(n - 1, 1))
    return [torch.tensor([ids[i:i + window]]) for i in range(0, len(ids) - window + 1, step)][:n]


def harvest(model, wins) -> tuple[list, list]:
    """Per layer, (K (M, d), V (M, d)) of every window's prefilled cache, M = windows × tokens × KV heads."""
    import torch

    ks = [[] for _ in range(model.info.n_layers)]
    vs = [[] for _ in range(model.info.n_layers)]
    for w in wins:
        cache = model.prefill(w)
        for l in range(model.info.n_layers):
            d = cache.d_head
            ks[l].append(cache.keys(l)[0].reshape(-1, d).float().cpu())
            vs[l].append(cache.values(l)[0].reshape(-1, d).float().cpu())
    return [torch.cat(k) for k in ks], [torch.cat(v) for v in vs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atoms", type=int, default=512)
    ap.add_argument("--sparsity", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--train-tokens", type=int, default=4096)
    ap.add_argument("--eval-tokens", type=int, default=512)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="only these layers (a partial, for testing)")
    ap.add_argument("--out", default=None, help="default: efficiency/data/lexico/smollm2-n<atoms>")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import workbench as wb
    from workbench.texts import long_texts
    from efficiency.kv.lexico_dictionary import LexicoDictionary, learn_one, relative_error
    from safetensors.torch import load_file, save_file

    out = Path(a.out) if a.out else ROOT / "efficiency" / "data" / "lexico" / f"smollm2-n{a.atoms}"
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = wb.load()
    info, fingerprint, name = model.info, model.fingerprint, model.info.name
    layers = list(range(info.n_layers)) if a.layers is None else a.layers
    print(f"{name} ({fingerprint}): {info.n_layers} layers, {info.n_kv_heads} KV heads, d_head {info.d_head}", flush=True)
    train_w = windows(model, corpus_texts("train"), a.train_tokens, a.window)
    eval_w = windows(model, corpus_texts("eval"), a.eval_tokens, a.window)
    ood_w = [model.tokenize(t)[0] for t in long_texts(model, max(1, a.eval_tokens // a.window), a.window)]
    t0 = time.perf_counter()
    train, ev, ood = harvest(model, train_w), harvest(model, eval_w), harvest(model, ood_w)
    print(f"harvested {train[0][0].shape[0]} train / {ev[0][0].shape[0]} in-domain / {ood[0][0].shape[0]} "
          f"out-of-domain vectors per dictionary in {time.perf_counter() - t0:.0f}s", flush=True)
    del model  # the learning needs only the vectors

    keys, values, report = {}, {}, {}
    for l in layers:
        f = partial / f"layer{l}.safetensors"
        if f.exists():
            t = load_file(str(f))
            keys[l], values[l] = t["keys"], t["values"]
            report[l] = json.loads((partial / f"layer{l}.json").read_text())
            print(f"layer {l}: resumed", flush=True)
            continue
        t0 = time.perf_counter()
        rep = {}
        for kind, data, evd, oodd, store in (("keys", train[0][l], ev[0][l], ood[0][l], keys),
                                             ("values", train[1][l], ev[1][l], ood[1][l], values)):
            D, errs = learn_one(data, a.atoms, a.sparsity, a.iterations, seed=a.seed + l)
            store[l] = D
            rep[kind] = {"train_passes": errs,
                         **{f"{split}_s{s}": relative_error(x, D, s) for s in (4, 8, 14)
                            for split, x in (("in_domain", evd), ("out_of_domain", oodd))}}
        rep["seconds"] = time.perf_counter() - t0
        report[l] = rep
        save_file({"keys": keys[l].contiguous(), "values": values[l].contiguous()}, str(f))
        (partial / f"layer{l}.json").write_text(json.dumps(rep))
        print(f"layer {l}: K train {rep['keys']['train_passes'][-1]:.3f} in {rep['keys'][f'in_domain_s{a.sparsity}']:.3f} "
              f"out {rep['keys'][f'out_of_domain_s{a.sparsity}']:.3f} | V train {rep['values']['train_passes'][-1]:.3f} "
              f"in {rep['values'][f'in_domain_s{a.sparsity}']:.3f} out {rep['values'][f'out_of_domain_s{a.sparsity}']:.3f} "
              f"({rep['seconds']:.0f}s)", flush=True)
    if a.layers is not None:
        print("partial run (--layers): not writing the dictionary")
        return
    config = {"n_atoms": a.atoms, "train_sparsity": a.sparsity, "iterations": a.iterations,
              "train_tokens": len(train_w) * a.window, "eval_tokens": len(eval_w) * a.window, "window": a.window,
              "train_vectors_per_dictionary": int(train[0][0].shape[0]), "seed": a.seed,
              "corpus": "bundled corpus, train split (held out: eval split, in-domain; pydoc topics, out-of-domain)",
              "method": "MOD (least-squares atoms for fixed OMP codes), unit-norm atoms",
              "errors": {str(l): report[l] for l in layers}, "seconds": time.perf_counter() - t_start,
              "threads": a.threads, "loadavg": os.getloadavg()}
    d = LexicoDictionary(torch.stack([keys[l] for l in layers]), torch.stack([values[l] for l in layers]), name,
                         fingerprint, config)
    path = d.save(out)
    print(f"wrote {path} and {out.with_suffix('.json')} ({path.stat().st_size / 2**20:.1f} MiB, "
          f"{config['seconds']:.0f}s)", flush=True)
    for f in partial.iterdir():
        f.unlink()
    partial.rmdir()


if __name__ == "__main__":
    main()
