#!/usr/bin/env bash
# Build the docs and take headless-Chromium screenshots of the pages a user sees first, at
# 1280 px, to check the header (one row), the API titles (not clipped) and the code (no
# horizontal scrolling). Needs chromium (Debian: apt-get install chromium).
#
#   docs/scripts/screenshots.sh [OUTDIR]     # default OUTDIR: docs/_build/screenshots
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-docs/_build/screenshots}
html=docs/_build/html
python -m sphinx -W --keep-going -q -b html docs "$html"
mkdir -p "$out"
for page in index quickstart comparison benchmarks api api/generated/shtopk.successive_halving_topk \
    api/generated/shtopk.vjp.successive_halving_topk; do
    profile=$(mktemp -d)
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" --window-size=1280,900 --hide-scrollbars \
        --screenshot="$out/${page//\//_}.png" "file://$PWD/$html/$page.html" 2> /dev/null
    rm -rf "$profile"
done
echo "screenshots in $out"
