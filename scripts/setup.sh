#!/usr/bin/env bash
# Installs microkit and everything it needs into .venv (idempotent; a second run costs seconds).
# llama-cpp-python is a source build: its wheel is built once into a cache keyed by version and
# CMAKE_ARGS, and its source release is kept there too (export/ needs llama.cpp's converter from it).
# GPU users: install your CUDA build of torch 2.13.0 into .venv first, and set CMAKE_ARGS for
# llama.cpp (e.g. CMAKE_ARGS="-DGGML_CUDA=on") before running this.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
CACHE="${MICROKIT_HOME:-$HOME/.cache/microkit}"
LLAMA_VERSION="$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -n 1 | cut -d= -f3)"
LLAMA_CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
LLAMA_KEY="$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)"
WHEEL_DIR="$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$LLAMA_KEY"
SDIST="$CACHE/src/llama_cpp_python-$LLAMA_VERSION.tar.gz"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel

if [ ! -f "$SDIST" ]; then
    echo "==> fetching the llama-cpp-python $LLAMA_VERSION source release"
    mkdir -p "$CACHE/src"
    "${PIP[@]}" download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$CACHE/src"
fi
if ! ls "$WHEEL_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    echo "==> building llama-cpp-python $LLAMA_VERSION once (CMAKE_ARGS=$LLAMA_CMAKE_ARGS; minutes on 2 cores)"
    mkdir -p "$WHEEL_DIR.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "${PIP[@]}" wheel -q --no-deps -w "$WHEEL_DIR.tmp" "$SDIST"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
fi

echo "==> installing microkit[all,dev] into .venv"
# torch first and alone: an already installed CUDA build of 2.13.0 satisfies the pin and is kept.
"${PIP[@]}" install -q "torch==2.13.0"
"${PIP[@]}" install -q --find-links "$WHEEL_DIR" -e ".[all,dev]"
echo "==> ready: .venv/bin/kit --help"
