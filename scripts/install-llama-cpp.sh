#!/usr/bin/env bash
# Installs llama.cpp's prebuilt CPU binaries (the npm package node-llama-cpp) into .llama-cpp/,
# a side folder that is git-ignored and never a dependency of adaptkit: test/llama-cpp.test.ts
# uses it as an independent implementation to check adaptkit's GGUF exports against.
#
# The version is locked: llama.cpp's outputs for a given file are what the tests compare with.
# Only the CPU build for this platform is installed (the CUDA and Vulkan builds are optional
# dependencies, hundreds of MB, and are left out); nothing is downloaded or built at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.21.1
DIR=.llama-cpp

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) PLATFORM=linux-x64 ;;
  Linux-aarch64) PLATFORM=linux-arm64 ;;
  Darwin-arm64) PLATFORM=mac-arm64-metal ;;
  Darwin-x86_64) PLATFORM=mac-x64 ;;
  *) echo "install-llama-cpp: no prebuilt llama.cpp for $(uname -s) $(uname -m)" >&2; exit 1 ;;
esac

mkdir -p "$DIR"
# a fixed package.json so the install is the same every time, whatever is in the folder
cat > "$DIR/package.json" <<JSON
{
  "private": true,
  "description": "llama.cpp for adaptkit's GGUF tests (scripts/install-llama-cpp.sh)",
  "dependencies": {
    "node-llama-cpp": "$VERSION",
    "@node-llama-cpp/$PLATFORM": "$VERSION"
  }
}
JSON
rm -f "$DIR/package-lock.json"
# the package's postinstall would look for (or build) binaries of its own: the prebuilt one is
# installed explicitly above, so it is not needed
NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix "$DIR" --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error

# fail here, not in the tests, if the binaries do not load on this machine (a file, not node -e:
# node-llama-cpp tests its binding in a child process that inherits node's arguments)
cat > "$DIR/check.mjs" <<JS
const { getLlama } = await import('./node_modules/node-llama-cpp/dist/index.js');
const llama = await getLlama({ gpu: false, build: 'never', progressLogs: false });
console.log('llama.cpp (node-llama-cpp $VERSION, ' + llama.buildType + ' $PLATFORM build) installed in $DIR/');
await llama.dispose();
JS
node "$DIR/check.mjs"
