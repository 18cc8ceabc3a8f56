#!/usr/bin/env bash
# Rebuilds eyevinn-whip-web-client.js: the npm package bundled for a plain <script> tag in Chromium.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund @eyevinn/whip-web-client@1.1.7 esbuild@0.28.2 >/dev/null
echo 'import { WHIPClient } from "@eyevinn/whip-web-client"; window.WHIPClient = WHIPClient;' > entry.js
out="$here/eyevinn-whip-web-client.js"
{ echo '/* @eyevinn/whip-web-client 1.1.7 (Apache-2.0; bundles events and sdp-transform, MIT), built by tests/browser/thirdparty/build.sh */'
  ./node_modules/.bin/esbuild entry.js --bundle --minify --format=iife --target=chrome100; } > "$out"
