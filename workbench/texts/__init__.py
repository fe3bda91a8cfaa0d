"""Bundled texts: the training corpus, its in-domain held-out split, the out-of-domain
evaluation set, and fixed-length token windows cut from any of them (see ``docs/corpus.md``)."""
from .corpus import (Document, corpus_info, eval_domains, load_corpus, load_documents, load_eval_set,
                     token_windows, tokenize_stream)

__all__ = ["Document", "corpus_info", "eval_domains", "load_corpus", "load_documents", "load_eval_set",
           "token_windows", "tokenize_stream"]
