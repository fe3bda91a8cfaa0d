#!/usr/bin/env bash
# System packages for the workbench. Today: a Chromium-based browser, which kaleido drives to
# export figures as PNG/SVG/PDF. Everything else works without it (figures fall back to HTML),
# so this script never fails the build: it installs chromium when it can (root + apt-get) and
# otherwise says how to get it.
set -uo pipefail

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
        skipped; figures are still written as HTML, and the tests that need a browser are skipped.
        To enable static export, either
          - Debian/Ubuntu:  sudo apt-get install -y chromium   (then re-run `make system`), or
          - point kaleido at an existing browser:  export BROWSER_PATH=/path/to/chrome
MSG
exit 0
