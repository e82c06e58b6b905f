#!/bin/sh
# Install libmoe into a temporary prefix and build a small program against it twice: with
# pkg-config and with CMake find_package(moe). Both programs must run and print the version.
# usage: consumer_test.sh BUILD_DIR CONSUMER_SRC WORK_DIR CC
set -eu
build=$1; src=$2; work=$3; cc=$4
rm -rf "$work"; mkdir -p "$work"
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" > "$work/install.log"
libdir=$(find "$prefix" -name 'libmoe.so.*' -print | head -n 1 | xargs dirname)
[ -f "$prefix/include/moe/moe.h" ] || { echo "FAIL: headers not installed"; exit 1; }
pcdir=$(find "$prefix" -name moe.pc -print | head -n 1 | xargs dirname)
[ -n "$pcdir" ] || { echo "FAIL: moe.pc not installed"; exit 1; }

# 1. pkg-config (the .pc file was configured for the build prefix; point it at this one)
flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --define-variable=prefix="$prefix" --cflags --libs moe)
"$cc" -std=c11 -Wall -Werror "$src/main.c" $flags -o "$work/consumer_pc"
LD_LIBRARY_PATH="$libdir" "$work/consumer_pc" > "$work/pc.out"
grep -q '^consumer ok' "$work/pc.out" || { echo "FAIL: pkg-config consumer"; cat "$work/pc.out"; exit 1; }

# 2. CMake find_package(moe) + moe::moe
cmake -S "$src" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" > "$work/cmake.log"
cmake --build "$work/cmake-build" > "$work/cmake-build.log"
LD_LIBRARY_PATH="$libdir" "$work/cmake-build/consumer" > "$work/cmake.out"
grep -q '^consumer ok' "$work/cmake.out" || { echo "FAIL: CMake consumer"; cat "$work/cmake.out"; exit 1; }

# 3. A request for an incompatible major version must be refused (SameMajorVersion).
mkdir -p "$work/badver"
cat > "$work/badver/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.25)
project(badver C)
find_package(moe 99 REQUIRED)
CM
if cmake -S "$work/badver" -B "$work/badver/b" -DCMAKE_PREFIX_PATH="$prefix" > "$work/badver.log" 2>&1; then
  echo "FAIL: find_package(moe 99) accepted an incompatible version"; exit 1
fi
echo "ok: pkg-config and find_package consumers built and ran; major-version check holds"
