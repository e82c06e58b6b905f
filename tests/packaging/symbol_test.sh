#!/bin/sh
# The shared library must export nothing but the moe_ API: internals stay hidden
# (-fvisibility=hidden), so they can change without breaking the ABI.
# usage: symbol_test.sh path/to/libmoe.so
set -eu
lib=$1
syms=$(nm -D --defined-only "$lib" | awk 'NF >= 3 { print $3 }')
[ -n "$syms" ] || { echo "FAIL: $lib exports no symbols at all"; exit 1; }
bad=$(printf '%s\n' "$syms" | grep -v '^moe_' || true)
if [ -n "$bad" ]; then
  echo "FAIL: $lib exports symbols outside the moe_ namespace:"; printf '  %s\n' $bad; exit 1
fi
soname=$(objdump -p "$lib" | awk '/SONAME/ { print $2 }')
case "$soname" in
  libmoe.so.[0-9]*) ;;
  *) echo "FAIL: SONAME is '$soname', expected libmoe.so.<ABI major>"; exit 1 ;;
esac
echo "ok: $(printf '%s\n' "$syms" | wc -l) symbols, all moe_*; SONAME $soname"
