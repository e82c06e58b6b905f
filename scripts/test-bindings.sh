#!/bin/sh
# Tests the Rust and Go bindings against an installed libmoe: installs Debian's Go when it is missing,
# builds libmoe (or takes a built, non-sanitized build directory), installs it into a temporary prefix
# that pkg-config and the dynamic loader are pointed at, then runs `cargo test --offline` and
# `go test` (and checks that the Go sources are gofmt-clean). Prints each stage's time.
# usage: scripts/test-bindings.sh [BUILD_DIR]
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
JOBS=${JOBS:-$(nproc)}
t_all=$(date +%s)
stage() { printf '\n==> %s\n' "$1"; t0=$(date +%s); }
done_stage() { printf '<== %s: %ss\n' "$1" "$(( $(date +%s) - t0 ))"; }

stage deps
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v go > /dev/null 2>&1; then
  echo "installing golang-go"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends golang-go > /dev/null
fi
command -v cargo > /dev/null 2>&1 || { echo "FAIL: cargo is not installed (Debian: apt-get install cargo)"; exit 1; }
go version; cargo --version
done_stage deps

build=${1:-}
if [ -z "$build" ]; then
  stage build
  build=build/bindings
  # single-rank tests: no MPI needed
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_TOOLS=OFF -DMOE_MPI=OFF \
        -DMOE_SANITIZE=OFF > /dev/null
  cmake --build "$build" -j "$JOBS" --target moe
  done_stage build
fi
build=$(cd "$build" && pwd)

stage install
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
cmake --build "$build" -j "$JOBS" --target moe > "$work/build.log" || { cat "$work/build.log"; exit 1; }
if ! cmake --install "$build" --prefix "$prefix" > "$work/install.log" 2>&1; then
  # a build dir whose other targets (tools) were not built: stage the library's own files by hand
  echo "cmake --install failed (unbuilt targets?); staging headers, library and moe.pc"
  rm -rf "$prefix"; mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
  cp -R include/moe "$prefix/include/"
  cp -P "$(dirname "$(find "$build" -name 'libmoe.so*' | head -n 1)")"/libmoe.so* "$prefix/lib/"
  sed -e 's|^libdir=.*|libdir=${prefix}/lib|' -e 's|^includedir=.*|includedir=${prefix}/include|' \
      "$build/moe.pc" > "$prefix/lib/pkgconfig/moe.pc"
fi
libdir=$(dirname "$(find "$prefix" -name 'libmoe.so*' | head -n 1)")
pcdir=$(dirname "$(find "$prefix" -name moe.pc | head -n 1)")
# moe.pc names the prefix the build was configured for; point it at this one
sed -i "s|^prefix=.*|prefix=$prefix|" "$pcdir/moe.pc"
PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2}
export PKG_CONFIG_PATH LD_LIBRARY_PATH OMP_NUM_THREADS OPENBLAS_NUM_THREADS
pkg-config --modversion moe > /dev/null || { echo "FAIL: pkg-config cannot find the installed moe.pc"; exit 1; }
echo "libmoe $(pkg-config --modversion moe) in $prefix"
done_stage install

stage rust
(cd bindings/rust && CARGO_TARGET_DIR="$build/cargo-target" cargo test --offline -j "$JOBS")
done_stage rust

stage go
unformatted=$(gofmt -l bindings/go)
[ -z "$unformatted" ] || { echo "FAIL: not gofmt-clean: $unformatted"; exit 1; }
(cd bindings/go && GOFLAGS=-mod=mod GOPROXY=off GOCACHE="$build/go-cache" go test -count=1 ./...)
done_stage go

printf '\nbindings: %ss\n' "$(( $(date +%s) - t_all ))"
