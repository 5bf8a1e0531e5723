#!/bin/sh
# Builds llama.cpp's llama-server from the sources vendored in the installed llama-cpp-python's
# sdist (same llama.cpp as the bot's own engine), with the CPU flags of deploy/cmake-args.sh,
# and prints the path of the binary. Kept in a cache folder outside the checkout, keyed by the
# version and the flags, so CI and later runs reuse it (the first build takes ~6 minutes on
# 2 cores). Usage: deploy/llama-server.sh [python]   (python: the venv's, default .venv/bin/python)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-"$here/../.venv/bin/python"}
version=${LLAMA_CPP_VERSION:-$("$python" -c 'import llama_cpp; print(llama_cpp.__version__)')}
args=${CMAKE_ARGS:-$(sh "$here/cmake-args.sh")}
# One space between flags, whoever wrote them (the key below must not depend on it).
# shellcheck disable=SC2086
set -- $args
args="$*"
key=$(printf '%s %s' "$version" "$args" | sha256sum | cut -c1-12)
cache=${DOMOVOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/domovoy}
out="$cache/llama-server/$version-$key"
binary="$out/build/bin/llama-server"
if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
mkdir -p "$out/src"
exec 3>&1 1>&2  # progress to stderr, the path alone to stdout
# One build at a time per folder: a second caller waits, then finds the binary.
exec 9>"$out/lock"
flock 9
if [ -x "$binary" ]; then
  echo "$binary" >&3
  exit 0
fi
if ! ls "$out"/src/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
  "$python" -m pip download --quiet --no-binary :all: --no-deps --dest "$out/src" \
    "llama-cpp-python==$version"
fi
rm -rf "$out/src/unpacked" && mkdir -p "$out/src/unpacked"
tar -xzf "$out"/src/llama_cpp_python-*.tar.gz -C "$out/src/unpacked"
# shellcheck disable=SC2086  # the flags are a list
cmake -S "$out"/src/unpacked/llama_cpp_python-*/vendor/llama.cpp -B "$out/build.tmp" \
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $args
cmake --build "$out/build.tmp" --target llama-server -j"$(nproc)"
rm -rf "$out/build" && mv "$out/build.tmp" "$out/build"
rm -rf "$out/src/unpacked"
echo "$binary" >&3
