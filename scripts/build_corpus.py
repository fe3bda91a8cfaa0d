#!/usr/bin/env python3
"""Build the bundled training corpus ``probes/data/corpus/corpus.jsonl`` from offline Debian packages.

Sources (both license-clean for redistribution; see ``probes/data/corpus/LICENSE.txt``):

* Python 3.11 documentation, reST sources (``apt-get install python3.11-doc``):
  prose paragraphs of at least ``--min-words`` words, with reST roles and markup stripped.
  PSF Documentation License (Python Software Foundation License Version 2).
* WordNet 3.0 glosses (``apt-get install wordnet-base``): definitions with their example
  sentences, grouped into short "documents" of related synsets. WordNet 3.0 license.

The output is deterministic: files are read in sorted order, and selection is by a seeded
shuffle. One JSON object per line: ``{"source": ..., "text": ...}``.

    python scripts/build_corpus.py            # default sizes (about 2.5 MB)
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

PYDOC = Path("/usr/share/doc/python3.11/html/_sources")
WORDNET = Path("/usr/share/wordnet")
OUT = Path(__file__).resolve().parents[1] / "probes" / "data" / "corpus" / "corpus.jsonl"

_ROLE = re.compile(r":[a-z:]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`foo <bar>` -> foo
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")                    # `text <url>`_ -> text
_MARK = re.compile(r"``([^`]+)``|`([^`]+)`_*|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")
_SKIP_START = ("..", ":", "|", "+", "=", "-", "*", "#", ">>>", "...", "$")


def clean_rst(par: str) -> str:
    par = _ROLE.sub(r"\1", par)
    par = _LINK.sub(r"\1", par)
    par = _MARK.sub(lambda m: next(g for g in m.groups() if g is not None), par)
    return " ".join(par.split())


def pydoc_paragraphs(min_words: int) -> list[str]:
    if not PYDOC.is_dir():
        raise SystemExit(f"{PYDOC} not found: install it with `apt-get install -y python3.11-doc`.")
    out = []
    for f in sorted(PYDOC.rglob("*.rst.txt")):
        if "whatsnew" in f.parts or "license" in f.name:
            continue
        for block in re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace")):
            lines = block.splitlines()
            if not lines or lines[0].startswith((" ", "\t")) or lines[0].lstrip().startswith(_SKIP_START):
                continue  # indented (code, directive bodies), directives, tables, titles, lists
            text = clean_rst(block)
            if len(text.split()) >= min_words and text[-1:] in ".:?!)":
                out.append(text)
    return out


def wordnet_documents(group: int) -> list[str]:
    if not (WORDNET / "data.noun").exists():
        raise SystemExit(f"{WORDNET} not found: install it with `apt-get install -y wordnet-base`.")
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        entries = []
        for line in (WORDNET / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # license header
            head, gloss = line.split("|", 1)
            words = head.split()
            n = int(words[3], 16)
            lemmas = [w.replace("_", " ") for w in words[4:4 + 2 * n:2]]
            lemmas = [re.sub(r"\(.*\)$", "", w) for w in lemmas]
            entries.append(f"{', '.join(lemmas)}: {gloss.strip()}")
        for i in range(0, len(entries), group):
            docs.append("\n".join(entries[i:i + group]))
    return docs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--pydoc-chars", type=int, default=1_900_000, help="characters of Python-doc prose")
    ap.add_argument("--wordnet-chars", type=int, default=600_000, help="characters of WordNet glosses")
    ap.add_argument("--min-words", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    rows = []
    for source, docs, budget in (("python-3.11-docs", pydoc_paragraphs(args.min_words), args.pydoc_chars),
                                 ("wordnet-3.0-glosses", wordnet_documents(8), args.wordnet_chars)):
        rng.shuffle(docs)
        used = 0
        for d in docs:
            if used >= budget:
                break
            rows.append({"source": source, "text": d})
            used += len(d)
        print(f"{source}: {sum(r['source'] == source for r in rows)} documents, {used:,} characters "
              f"(of {len(docs)} available)")
    rng.shuffle(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB, {len(rows)} documents)")


if __name__ == "__main__":
    main()
