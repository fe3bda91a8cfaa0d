"""Bundled texts: the training corpus, its held-out split, the out-of-domain set, the corpus build."""
import gzip
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from workbench.errors import InputError
from workbench.texts import (corpus_info, eval_domains, load_corpus, load_documents, load_eval_set, token_windows,
                             tokenize_stream)
from workbench.texts.corpus import CORPUS_PATH, EVAL_OOD_DIR

ROOT = Path(__file__).resolve().parents[1]


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def shingle_hashes(text: str, n: int = 12) -> set[bytes]:
    w = norm(text).split()
    return {hashlib.sha1(" ".join(w[i:i + n]).encode()).digest() for i in range(max(1, len(w) - n + 1))}


def test_corpus_size_sources_and_licences():
    info = corpus_info()
    sizes = info["sizes"]
    assert sizes["all"]["train"]["tokens"] >= 1_000_000
    sources = set(sizes) - {"all"}
    assert {"generated", "python-docs", "man-pages", "package-docs", "wordnet", "code-python", "code-c-cpp",
            "code-javascript"} <= sources
    assert all(info["licenses"][s] and all(info["licenses"][s]) for s in sources)  # every source has a licence
    assert hashlib.sha256(CORPUS_PATH.read_bytes()).hexdigest() == info["corpus_sha256"]
    gen = info["tokens_by_genre"]["generated"]
    assert {"narrative", "dialogue", "news", "howto", "encyclopedic", "code"} <= set(gen)


def test_heldout_split_is_by_group_and_covers_every_large_source():
    train, held = load_documents("train"), load_documents("heldout")
    assert not {d.group for d in train} & {d.group for d in held}  # whole groups held out
    assert not {norm(d.text) for d in train} & {norm(d.text) for d in held}
    held_sources = {d.source for d in held}
    for src in ("generated", "python-docs", "man-pages", "code-python", "wordnet"):
        assert src in held_sources, f"no held-out {src}"
    assert 0.02 < sum(len(d.text) for d in held) / sum(len(d.text) for d in train) < 0.15
    w = next(token_windows(_tokenizer(), [d.text for d in held[:20]], context=32, batch_prompts=3))
    assert w.shape == (3, 32) and w.dtype == torch.long


def test_no_evaluation_document_in_training():
    """No out-of-domain document, nor any 12-word run of one, appears anywhere in the corpus."""
    corpus = load_documents("all")
    ev = load_eval_set()
    corpus_docs = {hashlib.sha256(norm(d.text).encode()).digest() for d in corpus}
    assert not corpus_docs & {hashlib.sha256(norm(d.text).encode()).digest() for d in ev}
    ev_sh = set().union(*(shingle_hashes(d.text) for d in ev))
    hits = [d.origin for d in corpus if shingle_hashes(d.text) & ev_sh]
    assert hits == []
    # and the evaluation sources are not corpus sources
    assert not {d.source for d in ev} & {d.source for d in corpus}


def test_eval_set_manifest():
    man = json.loads((EVAL_OOD_DIR / "MANIFEST.json").read_text())
    files = {m["file"] for m in man["documents"]}
    on_disk = {p.relative_to(EVAL_OOD_DIR).as_posix() for p in EVAL_OOD_DIR.rglob("*.txt") if p.name != "LICENSES.txt"}
    assert files == on_disk  # every file listed, every listed file present
    assert all(m["source"] and m["license"] and m["origin"] for m in man["documents"])
    doms = eval_domains()
    assert {"news", "dialogue", "fiction", "howto", "chat", "code-python", "code-c", "code-javascript"} <= set(doms)
    ev = load_eval_set()
    assert all(sum(d.genre == dom for d in ev) >= 5 for dom in doms)
    assert len(load_eval_set(["news", "chat"], max_docs_per_domain=2)) == 4
    assert all("<|im_start|>assistant" in d.text for d in load_eval_set(["chat"]))
    with pytest.raises(InputError, match="Unknown evaluation domains"):
        load_eval_set(["poetry"])


def test_loader_errors_and_text_files(tmp_path):
    with pytest.raises(InputError, match="heldout"):
        load_corpus("eval")
    with pytest.raises(InputError, match="split must be"):
        load_corpus("test")
    with pytest.raises(InputError, match="does not exist"):
        load_corpus(path=tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(InputError, match="no documents"):
        load_corpus("all", path=empty)
    two = tmp_path / "two.txt"
    two.write_text("first document\n\nsecond one\n")
    assert load_corpus("train", path=two) == ["first document", "second one"]
    with pytest.raises(InputError, match="no documents"):
        load_corpus("train", sources=["nonexistent"])
    with pytest.raises(InputError, match="empty"):
        tokenize_stream(None, [])


def _tokenizer():
    import workbench as wb
    return wb.load("tiny-llama").tokenizer


def _build(out: Path, gen_cache: Path, sources: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "scripts" / "build_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--model", "tiny-llama", "--generated", "6", "--gen-batch-size", "3", "--gen-max-new-tokens", "40", "--min-doc-chars", "20",
              "--gen-min-words", "0", "--gen-cache", str(gen_cache), "--out-dir", str(out), "--sources", *sources,
              "--budget", "package-docs=30000", "wordnet=15000", "--heldout-fraction", "0.2"])


def test_corpus_build_is_deterministic(tmp_path):
    """Same seed, same bytes: two small builds (tiny model, fresh generation caches) are identical."""
    sources = ["generated", "package-docs"] + (["wordnet"] if Path("/usr/share/wordnet/data.noun").exists() else [])
    _build(tmp_path / "a", tmp_path / "gen-a", sources)
    _build(tmp_path / "b", tmp_path / "gen-b", sources)
    for f in ("corpus.jsonl.gz", "meta.json", "LICENSES.jsonl.gz"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    rows = [json.loads(l) for l in gzip.decompress((tmp_path / "a" / "corpus.jsonl.gz").read_bytes()).splitlines()]
    assert {r["source"] for r in rows} == {"generated", "package-docs"} | ({"wordnet"} if "wordnet" in sources else set())
    assert {"train", "heldout"} == {r["split"] for r in rows}
    assert all(r["license"] for r in rows)
    shutil.rmtree(tmp_path / "gen-b")  # a different seed gives a different corpus
    assert len(load_corpus("all", path=tmp_path / "a" / "corpus.jsonl.gz")) == len(rows)
