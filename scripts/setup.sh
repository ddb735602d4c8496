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
LLAMA_CMAKE_ARGS="${CMAKE_ARGS:-$(scripts/llama_cmake_args.sh)}"
LLAMA_KEY="$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-8)"
WHEEL_DIR="$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$LLAMA_KEY"
SDIST="$CACHE/src/llama_cpp_python-$LLAMA_VERSION.tar.gz"

# a new .venv gets this llama-cpp-python build from the install below: noted, so it is not installed twice
[ -x .venv/bin/python ] || { "$PYTHON" -m venv .venv && echo "$LLAMA_KEY" > .venv/.llama-cmake-key; }
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

# llama.cpp's own tools from the same source release, built once: llama-imatrix (an importance matrix from the
# task's data for k-quants), llama-quantize (quantizing with it) and llama-perplexity.
TOOLS_DIR="$CACHE/tools/llama.cpp-$LLAMA_VERSION-$LLAMA_KEY"
if [ "${MICROKIT_SKIP_TOOLS:-0}" != 1 ] && [ ! -x "$TOOLS_DIR/bin/llama-imatrix" ]; then
    echo "==> building llama.cpp's tools (llama-quantize, llama-imatrix, llama-perplexity) once (minutes on 2 cores)"
    SRC="$(mktemp -d)"
    tar xzf "$SDIST" -C "$SRC" "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
    # shellcheck disable=SC2086  # CMAKE_ARGS is a list of flags
    cmake -S "$SRC/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF $LLAMA_CMAKE_ARGS > "$SRC/cmake.log" 2>&1 || { tail -n 20 "$SRC/cmake.log"; exit 1; }
    cmake --build "$SRC/build" --target llama-quantize llama-imatrix llama-perplexity \
        -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" > "$SRC/build.log" 2>&1 || { tail -n 20 "$SRC/build.log"; exit 1; }
    rm -rf "$TOOLS_DIR.tmp" && mkdir -p "$TOOLS_DIR.tmp/bin"
    cp "$SRC"/build/bin/llama-quantize "$SRC"/build/bin/llama-imatrix "$SRC"/build/bin/llama-perplexity "$TOOLS_DIR.tmp/bin/"
    rm -rf "$TOOLS_DIR" && mv "$TOOLS_DIR.tmp" "$TOOLS_DIR" && rm -rf "$SRC"
fi

# bubblewrap: the sandbox for teacher-written code (kit/distill/sandbox.py); where it cannot be installed (no root,
# no apt), code verifiers say so once and fall back to unshare and an audit hook.
if ! command -v bwrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    APT=(apt-get); [ "$(id -u)" = 0 ] || APT=(sudo -n apt-get)
    if "${APT[@]}" install -y -qq bubblewrap >/dev/null 2>&1 || \
        { "${APT[@]}" update -qq >/dev/null 2>&1 && "${APT[@]}" install -y -qq bubblewrap >/dev/null 2>&1; }; then
        echo "==> installed bubblewrap (the code verifiers' sandbox)"
    else
        echo "==> bubblewrap could not be installed here: code verifiers use unshare and an audit hook"
    fi
fi

echo "==> installing microkit[all,dev] into .venv"
# torch first and alone: an already installed CUDA build of 2.13.0 satisfies the pin and is kept.
"${PIP[@]}" install -q "torch==2.13.0"
"${PIP[@]}" install -q --find-links "$WHEEL_DIR" -e ".[all,dev]"
# a .venv that holds a llama-cpp-python build of other CMAKE_ARGS (same version, so pip kept it) takes this one
if [ "$(cat .venv/.llama-cmake-key 2>/dev/null)" != "$LLAMA_KEY" ]; then
    "${PIP[@]}" install -q --force-reinstall --no-deps "$WHEEL_DIR"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
    echo "$LLAMA_KEY" > .venv/.llama-cmake-key
fi
echo "==> ready: .venv/bin/kit --help"
