#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` once, from the same pinned source release (and CMAKE_ARGS) as the
# llama-cpp-python wheel and the tools `scripts/setup.sh` builds, into the same cache folder. Only the serving
# benchmark (bench/serve_concurrency.py) needs it: it is the reference microkit's server is measured against.
# About 5 minutes on 2 cores; a second run costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${MICROKIT_HOME:-$HOME/.cache/microkit}"
LLAMA_VERSION="$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -n 1 | cut -d= -f3)"
LLAMA_CMAKE_ARGS="${CMAKE_ARGS:-$(scripts/llama_cmake_args.sh)}"
LLAMA_KEY="$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)"
SDIST="$CACHE/src/llama_cpp_python-$LLAMA_VERSION.tar.gz"
TOOLS_DIR="$CACHE/tools/llama.cpp-$LLAMA_VERSION-$LLAMA_KEY"

if [ -x "$TOOLS_DIR/bin/llama-server" ]; then
    echo "$TOOLS_DIR/bin/llama-server"
    exit 0
fi
[ -f "$SDIST" ] || { echo "no llama-cpp-python source release in $CACHE/src: run bash scripts/setup.sh first" >&2; exit 1; }
echo "==> building llama.cpp's llama-server $LLAMA_VERSION once (CMAKE_ARGS=$LLAMA_CMAKE_ARGS; minutes on 2 cores)" >&2
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
tar xzf "$SDIST" -C "$SRC" "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
cmake -S "$SRC/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON $LLAMA_CMAKE_ARGS > "$SRC/cmake.log" 2>&1 || { tail -n 20 "$SRC/cmake.log" >&2; exit 1; }
cmake --build "$SRC/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    > "$SRC/build.log" 2>&1 || { tail -n 20 "$SRC/build.log" >&2; exit 1; }
mkdir -p "$TOOLS_DIR/bin"
cp "$SRC/build/bin/llama-server" "$TOOLS_DIR/bin/llama-server.tmp" && mv "$TOOLS_DIR/bin/llama-server.tmp" "$TOOLS_DIR/bin/llama-server"
echo "$TOOLS_DIR/bin/llama-server"
