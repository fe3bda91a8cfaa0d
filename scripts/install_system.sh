#!/usr/bin/env bash
# System packages for the workbench:
#   - WordNet 3.0 (Debian `wordnet-base`, /usr/share/wordnet) for the frames module (probes/frames);
#   - python3.11-doc, manpages, manpages-dev: sources of the training corpus (only to rebuild it);
#   - a Chromium-based browser, which kaleido drives to export figures as PNG/SVG/PDF and the
#     browser tests (Playwright) drive to test every interactive view in a real JupyterLab.
# Everything else works without them (figures fall back to HTML; WordNet tests skip), so this
# script never fails the build: it installs what it can (root + apt-get) and otherwise says how.
set -uo pipefail

# ---------------------------------------------------------------- WordNet (frames)
wordnet_dir="${WORKBENCH_WORDNET_DIR:-/usr/share/wordnet}"
if [ -f "$wordnet_dir/data.noun" ] && [ -f "$wordnet_dir/index.noun" ]; then
    echo "system: WordNet 3.0 found at $wordnet_dir"
else
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "system: WordNet not found; installing wordnet-base with apt-get (28 MB) ..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends wordnet-base; }
    fi
    if [ -f "$wordnet_dir/data.noun" ]; then
        echo "system: WordNet 3.0 installed at $wordnet_dir"
    else
        cat <<'MSG'
system: NOTE: WordNet 3.0 not found, so the frames module (probes/frames) cannot build word or
        concept frames and its tests are skipped. To enable it, either
          - Debian/Ubuntu:  sudo apt-get install -y wordnet-base   (then re-run `make system`), or
          - point the workbench at a WordNet 3.0 dict folder:  export WORKBENCH_WORDNET_DIR=/path/to/dict
MSG
    fi
fi

# ---------------------------------------------------------------- corpus sources (scripts/build_corpus.py)
# Only needed to rebuild the bundled training corpus (`make corpus` passes --corpus); the corpus
# itself ships with the repository, so `make test` never installs these. Python 3.11 documentation (PSF licence) and the Linux man pages (man-pages
# project licences, SPDX header in each page), read offline from the Debian packages.
corpus_pkgs=""
if [ "${1:-}" = "--corpus" ]; then
[ -d /usr/share/doc/python3.11/html/_sources ] || corpus_pkgs="$corpus_pkgs python3.11-doc"
dpkg -s manpages >/dev/null 2>&1 || corpus_pkgs="$corpus_pkgs manpages"
dpkg -s manpages-dev >/dev/null 2>&1 || corpus_pkgs="$corpus_pkgs manpages-dev"
if [ -z "$corpus_pkgs" ]; then
    echo "system: corpus sources found (python3.11-doc, manpages, manpages-dev)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system: installing corpus sources with apt-get:$corpus_pkgs ..."
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $corpus_pkgs >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $corpus_pkgs >/dev/null 2>&1; } \
        || echo "system: NOTE: could not install$corpus_pkgs; only needed to rebuild the corpus (make corpus)."
else
    echo "system: NOTE:$corpus_pkgs not installed; only needed to rebuild the corpus (make corpus):"
    echo "        sudo apt-get install -y$corpus_pkgs"
fi
fi

# ---------------------------------------------------------------- browser (static figure export)

find_browser() {
    if [ -n "${BROWSER_PATH:-}" ] && [ -x "${BROWSER_PATH}" ]; then echo "${BROWSER_PATH}"; return 0; fi
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable chrome; do
        if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    done
    [ -x /usr/bin/chromium ] && { echo /usr/bin/chromium; return 0; }
    return 1
}

if path="$(find_browser)"; then
    echo "system: browser for static figure export found at $path"
    exit 0
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system: no browser found; installing chromium with apt-get (about 30 s) ..."
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium; }; then
        if path="$(find_browser)"; then
            echo "system: chromium installed at $path"
            exit 0
        fi
    fi
    echo "system: WARNING: apt-get could not install chromium (offline, or no such package here)."
fi

cat <<'MSG'
system: NOTE: no Chromium/Chrome browser found, so static figure export (PNG/SVG/PDF) will be
        skipped (figures are still written as HTML), and the browser tests (tests/test_browser.py,
        JupyterLab in a real browser) FAIL until one is installed (deselect them with
        pytest -m "not browser"). To get one, either
          - Debian/Ubuntu:  sudo apt-get install -y chromium   (then re-run `make system`), or
          - point kaleido at an existing browser:  export BROWSER_PATH=/path/to/chrome
MSG
exit 0
