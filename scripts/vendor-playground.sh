#!/usr/bin/env bash
# Refresh the playground's vendored browser libraries from npm.
#
# The page (corral/playground/static) is plain ES modules with no build step; the four
# libraries it uses are copied, as published, from the npm packages pinned in
# scripts/playground-vendor/package-lock.json into corral/playground/static/vendor/, each with
# its licence, and listed with their sha256 in vendor/MANIFEST.json. tests/test_playground.py
# checks that manifest against the files and the lock file, offline. Run this only to change
# a library version: edit package.json, `npm install --package-lock-only`, then this script.
set -euo pipefail
cd "$(dirname "$0")/.."
lock_dir=scripts/playground-vendor
out=corral/playground/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$lock_dir/package.json" "$lock_dir/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
nm=$work/node_modules
hl=$nm/@highlightjs/cdn-assets

rm -rf "$out"
mkdir -p "$out/licenses" "$out/highlight/languages"
cp "$nm/marked/lib/marked.esm.js" "$out/marked.esm.js"
cp "$nm/dompurify/dist/purify.es.mjs" "$out/purify.es.mjs"
cp "$nm/uplot/dist/uPlot.esm.js" "$nm/uplot/dist/uPlot.min.css" "$out/"
cp "$hl/es/core.min.js" "$out/highlight/core.min.js"
cp "$hl/styles/github.min.css" "$out/highlight/github.min.css"
cp "$hl/styles/github-dark.min.css" "$out/highlight/github-dark.min.css"
for lang in bash c cpp css diff go java javascript json markdown python rust shell sql typescript xml yaml; do
  cp "$hl/es/languages/$lang.min.js" "$out/highlight/languages/$lang.min.js"
done
cp "$nm/marked/LICENSE" "$out/licenses/marked.LICENSE.txt"
cp "$nm/dompurify/LICENSE" "$out/licenses/dompurify.LICENSE.txt"
cp "$nm/uplot/LICENSE" "$out/licenses/uplot.LICENSE.txt"
cp "$hl/LICENSE" "$out/licenses/highlight.js.LICENSE.txt"

python3 - "$out" "$nm" <<'EOF'
import hashlib, json, sys
from pathlib import Path

out, nm = Path(sys.argv[1]), Path(sys.argv[2])
owners = {"marked": "marked", "purify": "dompurify", "uPlot": "uplot", "highlight": "@highlightjs/cdn-assets",
          "marked.LICENSE": "marked", "dompurify.LICENSE": "dompurify", "uplot.LICENSE": "uplot",
          "highlight.js.LICENSE": "@highlightjs/cdn-assets"}
files = {}
for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "MANIFEST.json"):
    rel = path.relative_to(out).as_posix()
    first = rel.split("/")[0] if "/" in rel and not rel.startswith("licenses/") else path.name.split(".")[0]
    if rel.startswith("licenses/"):
        first = path.name.removesuffix(".txt")
    package = owners[first]
    version = json.loads((nm / package / "package.json").read_text())["version"]
    files[rel] = {"package": package, "version": version, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
(out / "MANIFEST.json").write_text(json.dumps({"files": files}, indent=1) + "\n")
EOF
echo "vendored into $out:"
ls -R "$out"
