#!/bin/sh
# The main job from a fresh Debian machine: install dependencies, build, and run it.
# Until the trainer lands this runs the smoke example, which exercises the public API end to end.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build/release -j "$(nproc)" --target moe-smoke
./build/release/tools/moe-smoke "$@"
