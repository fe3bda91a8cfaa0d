"""A cached fp32 copy of a model in the user cache directory, rebuilt when missing or corrupt.

Layout of one entry (``<cache>/<name>/``): the HF ``save_pretrained`` files of model and tokenizer,
``workbench_checksums.json`` (SHA-256 of every file, computed from the files as written, plus a
digest of sampled bytes), and ``workbench_cache.json`` written last, holding the key the entry was
built for. An entry without that marker, with another key, without checksums, whose files fail the
check, or that fails to load, is rebuilt (never crashed on).

**Checking cost.** Hashing the whole 538 MB SmolLM2 entry takes about 0.4-0.5 s (SHA-256 at
about 1.1-1.3 GB/s from the page cache, measured on the 2-core development machine), about as
long as loading it, so it is not done on every load:

- at build time, every file is hashed and its size and modification time are recorded as verified;
- on load, a file whose size differs from the record is corrupt; a file whose modification time
  differs from the verified one (it was written since) is hashed in full and compared, and the new
  time is recorded when it matches; otherwise only ``SAMPLE_CHUNKS`` chunks of ``SAMPLE_BYTES``
  spread evenly over the file (the whole file when smaller: 4 MiB, about 5 ms) are hashed and
  compared with the build-time sample digest.

So any write to a file (the usual way bytes get corrupted: a tool, a partial copy) is caught by a
full hash, and silent in-place damage that keeps the modification time (bit rot) is caught when it
hits a sampled chunk. ``verify="full"`` (or ``WORKBENCH_VERIFY_CACHE=full`` in the environment)
hashes every file on every load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import InputError
from ..paths import atomic_dir, atomic_write_json, cache_dir

log = logging.getLogger(__name__)
MARKER = "workbench_cache.json"
CHECKSUMS = "workbench_checksums.json"
FORMAT_VERSION = 1
SAMPLE_CHUNKS = 64
SAMPLE_BYTES = 64 * 1024
VERIFY_CHOICES = ("auto", "full")

Builder = Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]


# ---------------------------------------------------------------------- checksums
def file_sha256(path: Path) -> str:
    """SHA-256 of a whole file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_sha256(path: Path, size: int | None = None) -> str:
    """SHA-256 of ``SAMPLE_CHUNKS`` chunks of ``SAMPLE_BYTES`` spread evenly over the file, first and
    last bytes included (the whole file when it is not larger than the chunks together)."""
    size = os.path.getsize(path) if size is None else size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= SAMPLE_CHUNKS * SAMPLE_BYTES:
            h.update(f.read())
        else:
            for i in range(SAMPLE_CHUNKS):
                f.seek(i * (size - SAMPLE_BYTES) // (SAMPLE_CHUNKS - 1))
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _entry_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.name not in (MARKER, CHECKSUMS))


def write_checksums(path: Path) -> dict:
    """Hash every file of the entry folder ``path`` and write ``CHECKSUMS`` (they count as verified)."""
    files = {}
    for p in _entry_files(path):
        st = p.stat()
        files[p.name] = {"bytes": st.st_size, "sha256": file_sha256(p), "sample_sha256": sample_sha256(p, st.st_size),
                         "verified_mtime_ns": st.st_mtime_ns}
    record = {"algorithm": "sha256", "sample": {"chunks": SAMPLE_CHUNKS, "bytes": SAMPLE_BYTES}, "files": files}
    atomic_write_json(path / CHECKSUMS, record)
    return record


def verify_entry(path: Path, full: bool = False) -> str | None:
    """Check the entry's files against its checksums; return None when they match, else the problem.

    full=False: size always; a full hash of the files modified since they were last verified, a
    sampled hash of the others (see the module docstring). full=True: a full hash of every file.
    A file that passes a full hash after a modification gets its new time recorded.
    """
    try:
        record = json.loads((path / CHECKSUMS).read_text())
        files = record["files"]
        sample = record.get("sample", {})
    except FileNotFoundError:
        return "it has no checksums (written by an older workbench)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its checksum file is unreadable ({type(exc).__name__})"
    if sample and (sample.get("chunks"), sample.get("bytes")) != (SAMPLE_CHUNKS, SAMPLE_BYTES):
        full = True  # sampled with other settings: the sample digest is not comparable
    touched = False
    for name, want in files.items():
        p = path / name
        try:
            st = p.stat()
        except FileNotFoundError:
            return f"{name} is missing"
        if st.st_size != want["bytes"]:
            return f"{name} has {st.st_size} bytes instead of {want['bytes']}"
        if full or st.st_mtime_ns != want.get("verified_mtime_ns"):
            if file_sha256(p) != want["sha256"]:
                return f"the SHA-256 of {name} does not match the one recorded when the entry was built"
            if st.st_mtime_ns != want.get("verified_mtime_ns"):
                want["verified_mtime_ns"] = st.st_mtime_ns
                touched = True
        elif sample_sha256(p, st.st_size) != want["sample_sha256"]:
            return f"sampled bytes of {name} do not match the ones recorded when the entry was built"
    if touched:
        try:
            atomic_write_json(path / CHECKSUMS, record)
        except OSError:  # read-only cache: it is checked in full again next time, which is fine
            pass
    return None


# ---------------------------------------------------------------------- the cache
def _verify_mode(verify: str | None) -> str:
    mode = verify or os.environ.get("WORKBENCH_VERIFY_CACHE") or "auto"
    if mode not in VERIFY_CHOICES:
        raise InputError(f"verify must be one of {VERIFY_CHOICES} (or WORKBENCH_VERIFY_CACHE unset), got {mode!r}.")
    return mode


def _load_entry(path: Path, key: dict, verify: str = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
    marker = path / MARKER
    if not marker.exists():
        return None
    try:
        if json.loads(marker.read_text()) != key:
            return None
    except Exception as exc:  # a garbled marker: rebuild
        warnings.warn(f"workbench: cached model at {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it.")
        return None
    problem = verify_entry(path, full=verify == "full")
    if problem is not None:
        warnings.warn(f"workbench: cached model at {path} is corrupt or unverifiable: {problem}; rebuilding it.")
        return None
    try:
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        return hf.eval(), tok
    except Exception as exc:  # corrupt or truncated files: rebuild instead of crashing
        warnings.warn(f"workbench: cached model at {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it.")
        return None


def load_cached(name: str, key: dict, build: Builder, root: Path | None = None,
                verify: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """Return ``(hf_model, tokenizer, from_cache)``, building and caching the fp32 copy if needed.

    ``key`` describes the source (file size, version...); a change invalidates the entry.
    The entry is written atomically: a crash mid-write leaves the old state, never a half entry.
    verify: "auto" (default; sampled bytes unless a file changed, see the module docstring) or
    "full" (hash every file); default from ``$WORKBENCH_VERIFY_CACHE``.
    """
    mode = _verify_mode(verify)
    path = (root or cache_dir()) / name
    key = {"format": FORMAT_VERSION, **key}
    hit = _load_entry(path, key, mode)
    if hit is not None:
        return hit[0], hit[1], True
    hf, tok = build()
    try:
        with atomic_dir(path) as tmp:
            hf.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            write_checksums(tmp)
            (tmp / MARKER).write_text(json.dumps(key))
    except OSError as exc:  # a read-only or full disk must not stop the user from working
        warnings.warn(f"workbench: could not write the model cache at {path} ({exc}); continuing without it.")
    return hf, tok, False
