#!/usr/bin/env python3
"""Build the bundled training corpus ``workbench/texts/data/corpus/`` (see ``docs/corpus.md``).

Sources (``--sources``; licences recorded per document and in ``LICENSES.jsonl.gz``):

  generated     text sampled from the model over a seeded grid of topics x genres x formats
                (chat transcripts, plain replies, continuations of plain-text openings)
  python-docs   Python 3.11 documentation (Debian python3.11-doc), PSF licence
  man-pages     Linux man-pages project (Debian manpages, manpages-dev), rendered with man
  package-docs  README / long descriptions of the permissively licensed packages in the venv
  code          source files of those packages (Python, C/C++, Cython, JavaScript, TypeScript, R)
                and the Perl modules of Debian perl-base
  wordnet       WordNet 3.0 glosses (Debian wordnet-base)

Steps: collect each source within its character budget (seeded choice), drop every document
that shares a 12-word shingle with the out-of-domain evaluation set, remove repeated paragraphs
(first occurrence kept) and exact duplicate documents, hold out whole groups per source and genre
(``--heldout-fraction`` of the characters of each), shuffle, and write ``corpus.jsonl.gz``
(gzip with a fixed header, so the same inputs give the same bytes), ``meta.json`` and
``LICENSES.jsonl.gz``. Generated text is cached per batch in the user cache, so an interrupted
build resumes.

    OMP_NUM_THREADS=1 python scripts/build_corpus.py              # the bundled corpus
    python scripts/build_corpus.py --model tiny-llama --generated 8 --sources generated wordnet \
        --out-dir /tmp/c --budget wordnet=20000                    # a small build (the tests do this)
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

OUT_DIR = ROOT / "workbench" / "texts" / "data" / "corpus"
SOURCES = ("generated", "python-docs", "man-pages", "package-docs", "code", "wordnet")
# Default character budgets per corpus source (about 4 characters per token for prose, 3 for code).
BUDGETS = {"python-docs": 1_500_000, "man-pages": 1_000_000, "package-docs": 550_000, "code-python": 750_000,
           "code-c-cpp": 250_000, "code-cython": 80_000, "code-javascript": 200_000, "code-typescript": 50_000,
           "code-r": 30_000, "code-perl": 220_000, "wordnet": 450_000}
# Largest share of a code budget one package may take (JavaScript: few packages ship readable JS).
GROUP_CAP = {"code-javascript": 0.35, "code-typescript": 1.0, "code-r": 1.0}
SHINGLE_WORDS = 12


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[int]:
    """Hashes of every run of ``n`` whitespace-separated words (case-folded)."""
    w = text.lower().split()
    return {hash(" ".join(w[i:i + n])) for i in range(max(1, len(w) - n + 1))} if w else set()


def dedupe_paragraphs(docs: list[dict], min_par: int = 100, min_doc: int = 200) -> tuple[list[dict], int]:
    """Remove paragraphs (blocks between blank lines) of >= ``min_par`` characters already seen
    earlier in ``docs`` (whitespace-normalised), then documents left shorter than ``min_doc`` and
    exact duplicates. Returns (documents, number of paragraphs removed)."""
    seen, seen_docs, out, removed = set(), set(), [], 0
    for d in docs:
        kept = []
        for par in re.split(r"\n[ \t]*\n", d["text"]):
            key = " ".join(par.split())
            if len(key) >= min_par:
                h = hashlib.sha1(key.encode()).digest()
                if h in seen:
                    removed += 1
                    continue
                seen.add(h)
            kept.append(par)
        text = "\n\n".join(kept).strip("\n")
        h = hashlib.sha1(" ".join(text.split()).encode()).digest()
        if len(text) < min_doc or h in seen_docs:
            continue
        seen_docs.add(h)
        out.append({**d, "text": text})
    return out, removed


def heldout_groups(docs: list[dict], fraction: float, seed: int) -> set[str]:
    """Whole groups to hold out: per (source, genre), groups in a seeded order until ``fraction``
    of that stratum's characters is reached, skipping groups larger than twice what is still
    missing; when every group is that large, the smallest one."""
    strata: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for d in docs:
        strata[(d["source"], d["genre"])][d["group"]] += len(d["text"])
    out = set()
    for key in sorted(strata):
        sizes = strata[key]
        if len(sizes) < 4:
            continue  # too few groups to hold any out without losing the stratum from training
        target = fraction * sum(sizes.values())
        order = sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
        got = 0
        for g in order:
            if got >= target:
                break
            if sizes[g] > 2 * (target - got):
                continue
            out.add(g)
            got += sizes[g]
        if got == 0:
            out.add(min(order, key=lambda g: (sizes[g], order.index(g))))
    return out


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a fixed header (no file name, mtime 0), so equal input gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        f.write(data)
    return buf.getvalue()


def license_records(docs: list[dict]) -> list[dict]:
    """One record per licence holder actually used: packages (with their licence files), man
    pages (with their copyright lines), and the fixed notices of the other sources."""
    import importlib.metadata as md

    import corpus_sources as S
    recs: dict[str, dict] = {}
    for d in docs:
        src, origin = d["source"], d["origin"]
        if src.startswith("code-") and src != "code-perl" or src == "package-docs":
            pkg = origin.split("==")[0]
            if pkg in recs:
                continue
            dist = md.distribution(pkg)
            texts = []
            for f in sorted(str(x) for x in (dist.files or [])):
                if re.search(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*$", f, re.I) and ".dist-info/" in f:
                    try:
                        texts.append({"file": f, "text": Path(dist.locate_file(f)).read_text(encoding="utf-8")})
                    except (OSError, UnicodeDecodeError):
                        pass
            recs[pkg] = {"holder": pkg, "version": dist.version, "license": d["license"], "texts": texts}
        elif src == "man-pages":
            if d["group"] not in recs:  # the copyright lines of the page source
                recs[d["group"]] = {"holder": d["origin"], "license": d["license"],
                                    "texts": [{"file": d["origin"], "text": d.get("notice", "")}]}
        elif src not in recs:
            notice = S.fixed_notices().get(src)
            recs[src] = {"holder": src, "license": d["license"], "texts": [{"file": src, "text": notice}] if notice else []}
    return [recs[k] for k in sorted(recs)]


def collect(args, model, log) -> list[dict]:
    import corpus_sources as S
    docs: list[dict] = []
    budget = {**BUDGETS, **args.budget}
    seed = args.seed
    if "generated" in args.sources and args.generated:
        import corpus_generated as G
        from workbench.paths import cache_dir
        gen = G.generate(model, args.generated, seed, Path(args.gen_cache or cache_dir() / "corpus-build"),
                         max_new_tokens=args.gen_max_new_tokens, batch_size=args.gen_batch_size, log=log)
        kept = 0
        for g in gen:
            words = g["generated"].split()
            trigrams = [tuple(words[i:i + 3]) for i in range(max(0, len(words) - 2))]
            if len(words) < args.gen_min_words or len(set(trigrams)) < 0.5 * len(trigrams):
                continue  # too short, or looping
            kept += 1
            docs.append({"source": "generated", "genre": g["genre"], "format": g["format"],
                         "group": f"gen:{g['genre']}:{g['topic']}", "origin": f"{model.info.name} sampled, seed {seed}",
                         "license": "model output (SmolLM2-135M-Instruct is Apache-2.0); released with the workbench "
                                    "under Apache-2.0", "text": g["text"]})
        log(f"generated: kept {kept} of {len(gen)} samples")
    if "python-docs" in args.sources:
        docs += S.take_budget(S.pydoc_documents(), budget["python-docs"], seed, per_group_cap=0.03)
    if "man-pages" in args.sources:
        docs += S.take_budget(S.man_documents(budget["man-pages"], seed), budget["man-pages"], seed, per_group_cap=0.03)
    if "package-docs" in args.sources:
        docs += S.take_budget(S.package_doc_documents(), budget["package-docs"], seed, per_group_cap=0.05)
    if "code" in args.sources:
        by_lang = defaultdict(list)
        for d in S.package_code_documents() + S.perl_documents():
            by_lang[d["source"]].append(d)
        for lang in sorted(by_lang):
            if lang in budget:
                docs += S.take_budget(by_lang[lang], budget[lang], seed, per_group_cap=GROUP_CAP.get(lang, 0.12))
    if "wordnet" in args.sources:
        docs += S.take_budget(S.wordnet_documents(), budget["wordnet"], seed, per_group_cap=0.2)
    return docs


def content_args(argv: list[str]) -> list[str]:
    """The command-line arguments that change the corpus (output and cache folders left out)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--out-dir", "--gen-cache"):
            skip = True
            continue
        if not a.startswith(("--out-dir=", "--gen-cache=")):
            out.append(a)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    ap.add_argument("--generated", type=int, default=1920,
                    help="model-generated documents (the first cells of the seeded grid; 1,920 cells in all)")
    ap.add_argument("--gen-batch-size", type=int, default=32)
    ap.add_argument("--gen-max-new-tokens", type=int, default=200)
    ap.add_argument("--gen-cache", type=Path, default=None, help="cache folder for generated batches")
    ap.add_argument("--gen-min-words", type=int, default=30, help="drop shorter generations")
    ap.add_argument("--model", default=None, help="model for generation and token counts (default SmolLM2)")
    ap.add_argument("--budget", nargs="*", default=[], metavar="SOURCE=CHARS",
                    help=f"override character budgets {sorted(BUDGETS)}")
    ap.add_argument("--heldout-fraction", type=float, default=0.05)
    ap.add_argument("--min-doc-chars", type=int, default=200, help="drop shorter documents (after deduplication)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args(argv)
    args.budget = {k: int(v) for k, v in (b.split("=") for b in args.budget)}
    unknown = set(args.budget) - set(BUDGETS)
    if unknown:
        ap.error(f"unknown budget sources {sorted(unknown)}; known: {sorted(BUDGETS)}")

    import torch
    torch.set_num_threads(args.threads)
    import workbench as wb
    from workbench.texts import load_eval_set
    t0 = time.perf_counter()
    log = lambda s: print(s, flush=True)  # noqa: E731
    model = wb.load(args.model) if args.model else wb.load()
    docs = collect(args, model, log)
    log(f"collected {len(docs)} documents, {sum(len(d['text']) for d in docs):,} characters")

    # Nothing that overlaps the out-of-domain evaluation set may be trained on (or held out).
    eval_sh = set().union(*(shingles(d.text) for d in load_eval_set()))
    before = len(docs)
    docs = [d for d in docs if not (shingles(d["text"]) & eval_sh)]
    dropped_eval = before - len(docs)
    log(f"dropped {dropped_eval} documents sharing a {SHINGLE_WORDS}-word shingle with the evaluation set")

    docs.sort(key=lambda d: (d["source"], d["group"], d["origin"], d["text"]))
    docs, removed = dedupe_paragraphs(docs, min_doc=args.min_doc_chars)
    log(f"removed {removed} repeated paragraphs; {len(docs)} documents left")

    held = heldout_groups(docs, args.heldout_fraction, args.seed)
    for d in docs:
        d["split"] = "heldout" if d["group"] in held else "train"
    random.Random(args.seed).shuffle(docs)

    tok = model.tokenizer
    n_tokens = [len(x) for x in tok([d["text"] for d in docs], add_special_tokens=False)["input_ids"]]
    rows = [{"split": d["split"], "source": d["source"], "genre": d["genre"], "group": d["group"],
             "origin": d["origin"], "license": d["license"], "text": d["text"],
             **({"format": d["format"]} if "format" in d else {})} for d in docs]
    data = gzip_bytes("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode())

    stats: dict = defaultdict(lambda: defaultdict(lambda: {"documents": 0, "characters": 0, "tokens": 0, "groups": set()}))
    for d, n in zip(docs, n_tokens):
        for key in (d["source"], "all"):
            s = stats[key][d["split"]]
            s["documents"] += 1
            s["characters"] += len(d["text"])
            s["tokens"] += n
            s["groups"].add(d["group"])
    table = {k: {sp: {**{f: v for f, v in s.items() if f != "groups"}, "groups": len(s["groups"])}
                 for sp, s in sorted(v.items())} for k, v in sorted(stats.items())}
    genres = defaultdict(Counter)
    for d, n in zip(docs, n_tokens):
        genres[d["source"]][d["genre"]] += n
    meta = {
        "command": "python scripts/build_corpus.py " + " ".join(content_args(argv if argv is not None else sys.argv[1:])),
        "seed": args.seed, "sources": args.sources, "budgets_characters": {**BUDGETS, **args.budget},
        "heldout_fraction": args.heldout_fraction, "heldout_groups": sorted(held),
        "generated": {"documents_requested": args.generated if "generated" in args.sources else 0,
                      "model": model.info.name, "model_fingerprint": model.fingerprint,
                      "max_new_tokens": args.gen_max_new_tokens, "batch_size": args.gen_batch_size,
                      "sampling": {"temperature": 0.8, "top_p": 0.95, "repetition_penalty": 1.1}},
        "dropped_for_eval_overlap": dropped_eval, "paragraphs_deduplicated": removed,
        "tokenizer": model.info.name, "sizes": table, "tokens_by_genre": {k: dict(sorted(v.items())) for k, v in sorted(genres.items())},
        "licenses": {src: sorted({d["license"] for d in docs if d["source"] == src}) for src in sorted({d["source"] for d in docs})},
        "corpus_sha256": hashlib.sha256(data).hexdigest(),
    }
    from workbench.paths import atomic_write_bytes
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out_dir / "corpus.jsonl.gz", data)
    lic = gzip_bytes("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                             for r in license_records(docs)).encode())
    atomic_write_bytes(args.out_dir / "LICENSES.jsonl.gz", lic)
    atomic_write_bytes(args.out_dir / "meta.json", (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    tot = table["all"]
    log(f"wrote {args.out_dir}/corpus.jsonl.gz ({len(data) / 1e6:.2f} MB): "
        + ", ".join(f"{sp} {v['documents']} docs / {v['tokens']:,} tokens" for sp, v in tot.items())
        + f" in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
