#!/bin/sh
# moe-dataset end to end: build from files (one document each, or one per line), every --dtype,
# info's counts, and one-line errors (exit status 2) that name a wrong flag or argument.
# usage: test_cli.sh path/to/moe-dataset WORK_DIR
set -u
tool=$1; work=$2
rm -rf "$work"; mkdir -p "$work"
fail=0
check() { # check DESCRIPTION CONDITION...
  d=$1; shift
  if "$@"; then :; else echo "FAIL: $d"; fail=1; fi
}
differ() { ! cmp -s "$1" "$2"; }
field() { # field NAME FILE: the value printed after "NAME:"
  sed -n "s/^$1: *//p" "$2"
}

printf 'one\ntwo\n' > "$work/a.txt"          # 8 bytes, 2 lines
printf 'three\nfour' > "$work/b.txt"         # 10 bytes, 2 lines (the last without a newline)
: > "$work/empty.txt"

# Each file one document; an empty file is an empty document.
"$tool" build --output "$work/ds" "$work/a.txt" "$work/b.txt" "$work/empty.txt" > "$work/out" 2>&1
check "build exits 0" [ $? -eq 0 ]
check "build writes .bin and .idx" [ -f "$work/ds.bin" -a -f "$work/ds.idx" ]
cat "$work/a.txt" "$work/b.txt" > "$work/ab.expect"
check ".bin is the concatenated files (uint8)" cmp -s "$work/ds.bin" "$work/ab.expect"
"$tool" info "$work/ds" > "$work/info" 2>&1
check "info exits 0" [ $? -eq 0 ]
check "info: 3 documents" [ "$(field documents "$work/info")" = 3 ]
check "info: 18 tokens" [ "$(field tokens "$work/info")" = 18 ]
check "info: dtype uint8" [ "$(field dtype "$work/info")" = uint8 ]
check "info: vocabulary is the largest byte + 1" [ "$(field vocabulary "$work/info")" = 120 ]  # 'w' = 119
"$tool" info --seq-len 4 --validation-fraction 0.25 "$work/ds" > "$work/info2" 2>&1
check "info --seq-len: samples" grep -q '^samples: *3 training + 1 validation of 4 tokens' "$work/info2"

# One document per line.
"$tool" build --split-lines --dtype uint16 --output "$work/lines" "$work/a.txt" "$work/b.txt" > /dev/null 2>&1
check "build --split-lines exits 0" [ $? -eq 0 ]
"$tool" info "$work/lines" > "$work/info3" 2>&1
check "split-lines: 4 documents" [ "$(field documents "$work/info3")" = 4 ]
check "split-lines: dtype uint16" [ "$(field dtype "$work/info3")" = uint16 ]
check "uint16 .bin is twice the bytes" [ "$(wc -c < "$work/lines.bin")" -eq 36 ]
"$tool" build --dtype int32 -o "$work/i32" - < "$work/a.txt" > /dev/null 2>&1
check "int32 from stdin" [ "$(wc -c < "$work/i32.bin")" -eq 32 ]

# A text file is readable directly.
"$tool" info --seq-len 2 --validation-fraction 0 "$work/b.txt" > "$work/info4" 2>&1
check "info on text: kind" grep -q '^kind: *text' "$work/info4"
check "info on text: samples" grep -q '^samples: *4 training + 0 validation' "$work/info4"

# Errors: one line on stderr, naming what is wrong.
expect_error() { # expect_error STATUS NEEDLE ARGS...
  want=$1; needle=$2; shift 2
  "$tool" "$@" > "$work/eout" 2> "$work/err"
  got=$?
  check "'$*' exits $want (got $got)" [ "$got" -eq "$want" ]
  check "'$*' prints one line" [ "$(wc -l < "$work/err")" -eq 1 ]
  check "'$*' names '$needle'" grep -q -- "$needle" "$work/err"
}
expect_error 2 "--bogus" build --bogus --output "$work/x" "$work/a.txt"
expect_error 2 "--output" build "$work/a.txt"
expect_error 2 "FILE" build --output "$work/x"
expect_error 2 "uint7" build --dtype uint7 --output "$work/x" "$work/a.txt"
expect_error 2 "--output" build "$work/a.txt" --output "$work/x"
expect_error 2 "--seq-len" info --seq-len abc "$work/ds"
expect_error 2 "--validation-fraction" info --validation-fraction 1.5 "$work/ds"
expect_error 2 "--frobnicate" info --frobnicate "$work/ds"
expect_error 2 "frobnicate" frobnicate
expect_error 2 "--seed" generate --seed -3
expect_error 1 "nothing-here" info "$work/nothing-here"
expect_error 1 "missing.txt" build --output "$work/x" "$work/missing.txt"
expect_error 1 "larger than the data" info --seq-len 100 "$work/ds"
check "a failed build leaves no dataset" [ ! -e "$work/x.idx" -a ! -e "$work/x.bin" ]
printf 'different' > "$work/wrong.txt"
expect_error 1 "differs" generate --check "$work/wrong.txt"

# Help.
"$tool" --help > "$work/help" 2>&1
check "--help exits 0" [ $? -eq 0 ]
check "--help lists the commands" grep -q 'build --output PREFIX' "$work/help"
"$tool" build --help > /dev/null 2>&1
check "build --help exits 0" [ $? -eq 0 ]

# generate: deterministic, sized, and --check agrees with --output.
"$tool" generate --bytes 5000 --seed 7 --output "$work/g1" && "$tool" generate --bytes 5000 --seed 7 > "$work/g2"
check "generate is deterministic" cmp -s "$work/g1" "$work/g2"
check "generate reaches the size" [ "$(wc -c < "$work/g1")" -ge 5000 ]
"$tool" generate --bytes 5000 --seed 8 > "$work/g3"
check "the seed changes the text" differ "$work/g1" "$work/g3"
"$tool" generate --bytes 5000 --seed 7 --check "$work/g1" > /dev/null
check "generate --check accepts its own output" [ $? -eq 0 ]

[ "$fail" -eq 0 ] && echo "ok: moe-dataset command line"
exit $fail
