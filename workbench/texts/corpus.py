"""The bundled text corpus, the out-of-domain evaluation set, and token windows cut from text.

Training corpus (``data/corpus/corpus.jsonl.gz``, built by ``scripts/build_corpus.py``, described
in ``docs/corpus.md``): one JSON object per line with ``text`` and where it came from
(``source``, ``genre``, ``group``, ``origin``, ``license``) and its ``split``:

* ``"train"``: what transcoders and SAEs are trained on;
* ``"heldout"``: the in-domain held-out split. Whole *groups* (a documentation file, a manual
  page, a package's code, one topic of the generated text) are held out, chosen per source and
  genre, so no held-out document has a sibling in training.

Out-of-domain evaluation set (``data/eval_ood/``): documents from sources the corpus never uses
(hand-written prose and chat transcripts, CPython standard-library, zlib and npm code), one file
per document, with ``MANIFEST.json`` giving each one's domain, source and licence.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import InputError

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS_PATH = DATA_DIR / "corpus" / "corpus.jsonl.gz"
EVAL_OOD_DIR = DATA_DIR / "eval_ood"
SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class Document:
    """One document: its text and where it came from. ``genre`` is the domain for evaluation
    sets (e.g. "news", "code-python"); ``split`` is "train", "heldout" or "eval-ood"."""
    text: str
    source: str
    genre: str
    group: str = ""
    origin: str = ""
    license: str = ""
    split: str = ""


def _read_jsonl(path: Path) -> list[dict]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def load_documents(split: str = "train", path: str | Path | None = None, sources: Sequence[str] | None = None,
                   genres: Sequence[str] | None = None) -> list[Document]:
    """Documents of the bundled corpus (or of a ``.jsonl`` / ``.jsonl.gz`` / ``.txt`` file at ``path``).

    split: "train", "heldout" (in-domain held-out groups) or "all". sources / genres: keep only
    documents with these values (see ``corpus_info()["sources"]``). A ``.txt`` file is split into
    documents at blank lines, and a file without split labels counts as all "train".
    """
    if split == "eval":
        raise InputError("The corpus split 'eval' is now called 'heldout' (whole groups held out per source and "
                         "genre); the out-of-domain evaluation set is workbench.texts.load_eval_set().")
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}.")
    path = Path(path) if path is not None else CORPUS_PATH
    if not path.exists():
        raise InputError(f"Corpus file {path} does not exist. Rebuild the bundled one with "
                         "`python scripts/build_corpus.py`, or pass an existing .jsonl/.jsonl.gz/.txt path.")
    if path.suffix == ".txt":
        docs = [Document(d.strip(), source=path.name, genre="text", split="train")
                for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    else:
        docs = [Document(r["text"], r.get("source", ""), r.get("genre", ""), r.get("group", ""), r.get("origin", ""),
                         r.get("license", ""), r.get("split", "train")) for r in _read_jsonl(path)]
    if sources is not None:
        docs = [d for d in docs if d.source in set(sources)]
    if genres is not None:
        docs = [d for d in docs if d.genre in set(genres)]
    if split != "all":
        docs = [d for d in docs if d.split == split]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise InputError(f"The corpus at {path} has no documents for split={split!r}"
                         f"{f', sources={list(sources)}' if sources is not None else ''}"
                         f"{f', genres={list(genres)}' if genres is not None else ''}.")
    return docs


def load_corpus(split: str = "train", path: str | Path | None = None, sources: Sequence[str] | None = None,
                genres: Sequence[str] | None = None) -> list[str]:
    """Texts of ``load_documents(split, path, sources, genres)``."""
    return [d.text for d in load_documents(split, path, sources, genres)]


def corpus_info(path: str | Path | None = None) -> dict:
    """The build record next to the corpus (``meta.json``: command, sources, sizes in characters and
    tokens per source and split, licences, sha256 of the corpus file); {} when absent."""
    p = (Path(path).parent if path is not None else CORPUS_PATH.parent) / "meta.json"
    return json.loads(p.read_text()) if p.exists() else {}


def eval_domains() -> list[str]:
    """Domains of the out-of-domain evaluation set, in manifest order."""
    seen: list[str] = []
    for m in _manifest()["documents"]:
        if m["domain"] not in seen:
            seen.append(m["domain"])
    return seen


def _manifest() -> dict:
    p = EVAL_OOD_DIR / "MANIFEST.json"
    if not p.exists():
        raise InputError(f"The out-of-domain evaluation set is missing ({p}); it ships with the repository.")
    return json.loads(p.read_text(encoding="utf-8"))


def load_eval_set(domains: Sequence[str] | None = None, max_docs_per_domain: int | None = None) -> list[Document]:
    """The out-of-domain evaluation set: documents whose sources the training corpus never uses.

    domains: keep only these (``eval_domains()`` lists them). max_docs_per_domain: the first n of
    each domain (for quick runs). Each ``Document.genre`` is its domain.
    """
    if max_docs_per_domain is not None and (not isinstance(max_docs_per_domain, int) or max_docs_per_domain < 1):
        raise InputError(f"max_docs_per_domain must be a positive integer or None, got {max_docs_per_domain!r}.")
    known = eval_domains()
    if domains is not None:
        unknown = [d for d in domains if d not in known]
        if unknown:
            raise InputError(f"Unknown evaluation domains {unknown}; the set has {known}.")
    out, per = [], {}
    for m in _manifest()["documents"]:
        if domains is not None and m["domain"] not in domains:
            continue
        if max_docs_per_domain is not None and per.get(m["domain"], 0) >= max_docs_per_domain:
            continue
        per[m["domain"]] = per.get(m["domain"], 0) + 1
        text = (EVAL_OOD_DIR / m["file"]).read_text(encoding="utf-8")
        out.append(Document(text, source=m["source"], genre=m["domain"], group=m["file"], origin=m["origin"],
                            license=m["license"], split="eval-ood"))
    return out


# --------------------------------------------------------------------------- token windows
def tokenize_stream(tokenizer, texts: Sequence[str], separator: int = 0) -> torch.Tensor:
    """All texts tokenized and joined into one (N,) long tensor, ``separator`` between documents.

    The separator defaults to id 0 (``<|endoftext|>`` for SmolLM2, which has no BOS).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise InputError("The corpus is empty: pass at least one non-empty text.")
    ids: list[int] = []
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(separator)
    return torch.tensor(ids, dtype=torch.long)


def token_windows(tokenizer, texts: Sequence[str], context: int = 128, batch_prompts: int = 8,
                  seed: int | None = 0, repeat: bool = False) -> Iterator[torch.Tensor]:
    """Yield (batch_prompts, context) id windows cut from the joined token stream.

    Windows are non-overlapping; their order is shuffled with ``seed`` (None keeps corpus order).
    The last partial batch is yielded too. With ``repeat=True`` the stream restarts (reshuffled)
    after the last window, for training longer than one pass.
    """
    if context < 2:
        raise InputError(f"context must be at least 2 tokens (position 0 is excluded), got {context}.")
    stream = tokenize_stream(tokenizer, texts)
    n = stream.numel() // context
    if n == 0:
        raise InputError(f"The corpus has {stream.numel()} tokens, fewer than one window of {context}.")
    windows = stream[: n * context].view(n, context)
    epoch = 0
    while True:
        order = torch.arange(n)
        if seed is not None:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, n, batch_prompts):
            yield windows[order[i:i + batch_prompts]]
        epoch += 1
        if not repeat:
            return
