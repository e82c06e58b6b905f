#!/bin/sh
# Every public header must compile on its own, first in a translation unit, as strict C11 and as
# C++ (-pedantic -Werror), so users can include any one of them in any order and from C++.
# usage: header_test.sh INCLUDE_DIR WORK_DIR   (CC and CXX from the environment)
set -eu
inc=$1; work=$2
mkdir -p "$work"
fail=0; n=0
for h in "$inc"/moe/*.h; do
  name=$(basename "$h" .h)
  n=$((n + 1))
  printf '#include <moe/%s.h>\n#include <moe/%s.h>\nint moe_header_test_%s;\n' "$name" "$name" "$name" > "$work/$name.c"
  cp "$work/$name.c" "$work/$name.cpp"
  if ! ${CC:-cc} -std=c11 -pedantic -Wall -Wextra -Werror -I"$inc" -c "$work/$name.c" -o "$work/$name.c.o"; then
    echo "FAIL: moe/$name.h does not compile alone as C11"; fail=1
  fi
  if ! ${CXX:-c++} -std=c++11 -pedantic -Wall -Wextra -Werror -I"$inc" -c "$work/$name.cpp" -o "$work/$name.cpp.o"; then
    echo "FAIL: moe/$name.h does not compile alone as C++11"; fail=1
  fi
done
[ "$n" -gt 0 ] || { echo "FAIL: no headers found in $inc/moe"; exit 1; }
[ "$fail" -eq 0 ] && echo "ok: $n headers compile alone as C11 and C++11"
exit $fail
