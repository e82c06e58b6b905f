#!/bin/sh
# Runs bindgen on the fixture description (tests/good_api.json: every type kind) and checks that its
# outputs are valid: the ABI table compiles against tests/good_api.h (its static assertions compare
# each spelled type with the header's), and, when rustc is present, the Rust module compiles and its
# layout tests pass.
# usage: bindgen_fixture_test.sh BINDGEN ROOT WORK_DIR CC
set -eu
bindgen=$1; root=$2; work=$3; cc=$4
rm -rf "$work"; mkdir -p "$work"
"$bindgen" --desc "$root/bindings/gen/tests/good_api.json" --out "$work" "$root"
# the fixture's header is good_api.h, included as <good_api.h>
"$cc" -std=c11 -Wall -Wextra -Werror -c "$work/tests/abi/abi_table.c" -I "$root/bindings/gen/tests" \
      -I "$root/tests/abi" -o "$work/abi_table.o"
echo "ok: the fixture's ABI table compiles against good_api.h"
if command -v rustc > /dev/null 2>&1; then
  rustc --edition 2021 --test --crate-name fixture -o "$work/rust_layout" \
        "$work/bindings/rust/moe-sys/src/bindings.rs" 2> "$work/rustc.log" || { cat "$work/rustc.log"; exit 1; }
  "$work/rust_layout" -q
  echo "ok: the fixture's Rust module compiles and its layout tests pass"
else
  echo "skip: no rustc"
fi
for f in bindings/go/moe/zz_generated.go bindings/julia/src/LibMoe.jl; do
  [ -s "$work/$f" ] || { echo "FAIL: $f not generated"; exit 1; }
done
