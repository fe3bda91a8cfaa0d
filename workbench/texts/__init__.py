"""Every text source of the workbench in one place (all offline; see ``docs/corpus.md``).

- ``corpus``: the bundled training corpus, its held-out split (by source and genre), the out-of-domain
  evaluation set, and fixed-length token windows cut from any of them;
- ``domains``: hand-written prose and code paragraphs (``load_domain``, ``DOMAINS``);
- ``tasks``: synthetic long-context tasks (passkey, RULER-style needles, variable tracking) with scoring;
- ``long_texts``: CPython's pydoc topics and windows of a given token length;
- ``lens_corpus``: the default corpus for fitting lenses.
"""
from .corpus import (Document, corpus_info, eval_domains, load_corpus, load_documents, load_eval_set,
                     token_windows, tokenize_stream)
from .domains import DOMAINS, load_domain, load_domains
from .lens_corpus import lens_corpus
from .long_texts import long_texts, pydoc_text

__all__ = ["DOMAINS", "load_domain", "load_domains", "lens_corpus", "long_texts", "pydoc_text",
           "Document", "corpus_info", "eval_domains", "load_corpus", "load_documents", "load_eval_set",
           "token_windows", "tokenize_stream"]
