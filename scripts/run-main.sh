#!/bin/sh
# The main job from a fresh Debian machine: install dependencies, build, and train a small MoE
# language model on the corpus that ships in data/ (a few minutes on 2 cores). Progress is shown
# live; metrics, a loss plot, checkpoints and a text sample land in moe-train-out/.
# Extra arguments go to moe-train (see `moe-train --help`), e.g. `--steps 300` or `--resume`.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build/release -j "$(nproc)" --target moe-train
./build/release/tools/moe-train/moe-train "$@"
