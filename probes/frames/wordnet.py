"""Offline WordNet 3.0 through NLTK, from the Debian ``wordnet-base`` package (no download ever).

NLTK 3.10 refuses corpus roots outside ``nltk.data.path`` (its path-security check), and
Debian's ``/usr/share/wordnet`` lacks the ``lexnames`` file NLTK needs. So the database is
copied once into an NLTK data root under the workbench cache directory
(``<cache>/nltk_data/corpora/wordnet``), the 45-line ``lexnames`` is written beside it, and the
whole folder appears in one rename (``atomic_dir``): a reader never sees a half-copied WordNet.

``get_wordnet()`` returns the NLTK ``WordNetCorpusReader`` (cached per process).
Install the data with ``make system`` (``apt-get install wordnet-base``, as root).
"""
from __future__ import annotations

import os
import re
import shutil
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.paths import atomic_dir, cache_dir

# WordNet 3.0 lexicographer files, in file-number order (what NLTK reads from ``lexnames``).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation "
    "noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception "
    "verb.possession verb.social verb.stative verb.weather adj.ppl").split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
# Files NLTK's reader opens; all must be present in the system copy.
_REQUIRED = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
             "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc")
DEFAULT_SOURCE = "/usr/share/wordnet"


class WordNetMissingError(WorkbenchError, RuntimeError):
    """The WordNet database is not installed on this machine."""


def system_wordnet_dir() -> Path:
    """Where the Debian package puts WordNet (``$WORKBENCH_WORDNET_DIR`` overrides it)."""
    return Path(os.environ.get("WORKBENCH_WORDNET_DIR") or DEFAULT_SOURCE)


def nltk_root() -> Path:
    """The NLTK data root the workbench owns: ``<cache>/nltk_data``."""
    return cache_dir() / "nltk_data"


def wordnet_available() -> bool:
    """True when the system WordNet (or an already-prepared copy) is there."""
    if (nltk_root() / "corpora" / "wordnet" / "lexnames").is_file():
        return True
    src = system_wordnet_dir()
    return all((src / f).is_file() for f in _REQUIRED)


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>pos-number`` per line."""
    return "".join(f"{i:02d}\t{n}\t{_POS_NUMBER[n.split('.')[0]]}\n" for i, n in enumerate(LEXNAMES))


def prepare_wordnet(source: Path | str | None = None) -> Path:
    """Copy the system WordNet into the workbench's NLTK data root (once); return the corpus folder.

    Raises WordNetMissingError (saying to run ``make system``) when the database is absent.
    """
    dst = nltk_root() / "corpora" / "wordnet"
    if (dst / "lexnames").is_file():
        return dst
    src = Path(source) if source is not None else system_wordnet_dir()
    missing = [f for f in _REQUIRED if not (src / f).is_file()]
    if missing:
        raise WordNetMissingError(
            f"WordNet 3.0 is not installed: {src} lacks {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}. Install it with `make system` (runs `apt-get install -y "
            "wordnet-base` as root), or `sudo apt-get install -y wordnet-base`, or point WORKBENCH_WORDNET_DIR "
            "at a folder holding the WordNet 3.0 dict files (data.noun, index.noun, ...).")
    with atomic_dir(dst) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file():  # skip bin/, pixmaps/, wnres/
                shutil.copy2(f, tmp / f.name)
        (tmp / "lexnames").write_text(lexnames_text())
    return dst


@lru_cache(maxsize=1)
def _reader(root: str):
    import nltk
    from nltk.corpus.reader import WordNetCorpusReader

    class _OfflineWordNet(WordNetCorpusReader):
        """No cross-version sense mapping: it exists for the multilingual OMW data (not offline), and
        it needs ``index.sense``, which ``wordnet-base`` does not ship."""

        def map_wn(self, version="wordnet"):
            return None

    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)  # NLTK's path-security check only admits roots listed here
    with warnings.catch_warnings():  # "multilingual functions are not available": expected offline
        warnings.simplefilter("ignore", UserWarning)
        return _OfflineWordNet(str(Path(root) / "corpora" / "wordnet"), None)


def get_wordnet():
    """The NLTK WordNet 3.0 reader over the workbench's offline copy (prepared on first use)."""
    prepare_wordnet()
    return _reader(str(nltk_root()))


def lookup_synset(name: str):
    """``wn.synset(name)`` with an InputError naming close matches when ``name`` is unknown."""
    from workbench.errors import InputError

    wn = get_wordnet()
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"A synset name like 'dog.n.01' is needed, got {name!r}.")
    try:
        return wn.synset(name.strip())
    except Exception:  # nltk raises WordNetError / ValueError for malformed or unknown names
        head = name.strip().split(".")[0]
        close = [s.name() for s in wn.synsets(head)][:8]
        hint = f" Synsets for {head!r}: {', '.join(close)}." if close else " No synset has that lemma."
        raise InputError(f"Unknown WordNet synset {name!r} (expected 'lemma.pos.NN', e.g. 'woman.n.01').{hint}") \
            from None


@dataclass(frozen=True)
class SynsetRow:
    """One synset as read straight from the data files: name ('dog.n.01'), lemma names, category, gloss."""

    name: str
    pos: str
    lemmas: tuple[str, ...]
    lexname: str
    definition: str


_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


@lru_cache(maxsize=8)
def synset_table(pos: str | None = None) -> tuple[SynsetRow, ...]:
    """Every synset (of one part of speech, or all), in file order (noun, verb, adj, adv), parsed directly.

    Same names, lemmas and categories as ``wn.all_synsets(pos)`` ('a' includes satellites 's'), about 10x faster: NLTK builds a full
    Synset object (pointers, frames, seek bookkeeping) per line, which dominates a bank build.
    Canonical names come from the reader's lemma -> offsets index, as NLTK computes them.
    """
    from workbench.errors import InputError

    if pos is not None and pos not in ("n", "v", "a", "r", "s"):
        raise InputError(f"pos must be one of 'n', 'v', 'a', 'r', 's' or None, got {pos!r}.")
    wn = get_wordnet()
    offsets = wn._lemma_pos_offset_map  # {lemma: {pos: [offset, ...]}}, built by the reader at load
    root = nltk_root() / "corpora" / "wordnet"
    out = []
    for p in ("n", "v", "a", "r"):
        if pos is not None and pos != p and not (pos == "s" and p == "a"):
            continue
        with open(root / f"data.{_FILES[p]}", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  "):  # licence header
                    continue
                head, _, gloss = line.partition(" | ")
                f = head.split(" ")
                off, lex, ss_type, n = int(f[0]), int(f[1]), f[2], int(f[3], 16)
                if pos == "s" and ss_type != "s":  # pos "a" keeps satellites too, as NLTK does
                    continue
                names = tuple(re.sub(r"\(.*\)$", "", f[4 + 2 * i]) for i in range(n))
                first = names[0].lower()
                sense = offsets[first][ss_type].index(off) + 1
                out.append(SynsetRow(f"{first}.{ss_type}.{sense:02d}", ss_type, names, LEXNAMES[lex],
                                     gloss.strip().split("; \"")[0]))
    return tuple(out)


__all__ = ["SynsetRow", "synset_table", "LEXNAMES", "WordNetMissingError", "get_wordnet", "prepare_wordnet", "wordnet_available",
           "lookup_synset", "nltk_root", "system_wordnet_dir", "lexnames_text"]
