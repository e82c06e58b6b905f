#!/bin/sh
# Install libmoe's build and test dependencies from Debian's packages (idempotent; skips
# `apt-get update` when everything is already installed).
set -eu
PKGS="build-essential cmake pkg-config libopenblas-openmp-dev libcjson-dev libcmocka-dev doxygen
libffi-dev libclang-dev clang libopenmpi-dev openmpi-bin libxxhash-dev binutils golang-go"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# Rust: any cargo on PATH will do (the bindings build with Debian's rustc 1.63 and newer)
command -v cargo > /dev/null 2>&1 || missing="$missing cargo"
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing > /dev/null
