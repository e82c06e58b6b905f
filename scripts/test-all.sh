#!/bin/sh
# The whole test suite, from a fresh Debian machine: dependencies, build (with CUDA when nvcc is
# present: it compiles and links here even without a GPU), every ctest (C, MPI under mpirun, the
# ABI test), the API reference, the Rust and Go binding tests (cargo test, go test), the libFuzzer
# targets briefly on their seed corpora, and the C tests again under AddressSanitizer + UBSan. Prints each stage's time.
set -eu
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
t_all=$(date +%s)
stage() { printf '\n==> %s\n' "$1"; t0=$(date +%s); }
done_stage() { printf '<== %s: %ss\n' "$1" "$(( $(date +%s) - t0 ))"; echo "$1 $(( $(date +%s) - t0 ))s" >> "$TIMES"; }
TIMES=$(mktemp); trap 'rm -f "$TIMES"' EXIT

stage deps;        sh scripts/deps.sh;                                                   done_stage deps
stage configure;   cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_DOCS=ON > build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
                   grep -E '^-- libmoe' build-configure.log; rm -f build-configure.log; done_stage configure
stage build;       cmake --build build/release -j "$JOBS";                               done_stage build
stage test;        ctest --test-dir build/release -j "$JOBS" --output-on-failure;        done_stage test
stage bindings;    sh scripts/test-bindings.sh build/release;                            done_stage bindings
stage fuzz;        CC=clang cmake -S . -B build/fuzz -DCMAKE_BUILD_TYPE=Debug -DMOE_FUZZ=ON -DMOE_CUDA=OFF -DMOE_MPI=OFF \
                       -DMOE_BUILD_TOOLS=OFF -DMOE_BUILD_DOCS=OFF > /dev/null
                   cmake --build build/fuzz -j "$JOBS" --target fuzz_safetensors fuzz_idx fuzz_ckpt_index
                   ctest --test-dir build/fuzz -j "$JOBS" --output-on-failure -R '^fuzz_';  done_stage fuzz
stage asan-build;  cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=ON -DMOE_CUDA=OFF -DMOE_BUILD_DOCS=OFF > /dev/null
                   cmake --build build/asan -j "$JOBS";                                  done_stage asan-build
stage asan-test;   ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
                   ctest --test-dir build/asan -j "$JOBS" --output-on-failure -LE no-sanitize; done_stage asan-test

printf '\nstage times:\n'; cat "$TIMES"
printf 'total: %ss\n' "$(( $(date +%s) - t_all ))"
