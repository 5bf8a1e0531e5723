#!/bin/sh
# Prints the CMAKE_ARGS that build llama-cpp-python for this CPU.
#
# Why not llama.cpp's default -march=native: on CPUs that report AMX it enables the AMX
# backend, which segfaults on Q4_0/Q8_0 models. So: native off, and each x86 extension
# turned on only when /proc/cpuinfo lists it (a build with AVX-512 on a CPU without it dies
# with "illegal instruction"). Set CMAKE_ARGS yourself to override, e.g. -DGGML_CUDA=on.
set -eu

flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { case " $flags " in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }

case "$(uname -m)" in
  x86_64|amd64)
    printf '%s' "-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    printf ' %s' "-DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma)"
    printf ' %s' "-DGGML_F16C=$(has f16c) -DGGML_AVX512=$(has avx512f)"
    printf ' %s' "-DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni)"
    printf ' %s\n' "-DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AVX_VNNI=$(has avx_vnni)"
    ;;
  *)
    # ARM and others: the native build has no known trap there.
    echo "-DGGML_NATIVE=ON"
    ;;
esac
