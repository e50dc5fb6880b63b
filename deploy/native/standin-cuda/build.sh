#!/usr/bin/env bash
# Builds the stand-in driver libraries into OUT (default: next to the sources in ./build).
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$src/build}"
mkdir -p "$out"
flags=(-O2 -g -fPIC -shared -Wall -Wextra -Werror -std=gnu11 -pthread)
cc "${flags[@]}" -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so.1" "$src/cuda.c" "$src/common.c"
cc "${flags[@]}" -Wl,-soname,libnvidia-ml.so.1 -o "$out/libnvidia-ml.so.1" "$src/nvml.c" "$src/common.c"
