#!/bin/sh
# moe-train end to end on the built-in corpus with a tiny model: outputs exist, the loss falls,
# stopping and resuming gives the same losses bit for bit as not stopping, generation and HF export
# work from the checkpoint, and bad flags fail with a one-line error naming the flag.
# usage: test_cli.sh MOE_TRAIN DATA_FILE WORK_DIR
set -eu
bin=$1; data=$2; work=$3
rm -rf "$work"; mkdir -p "$work"
tiny="--data $data --layers 2 --d-model 32 --heads 4 --kv-heads 2 --experts 4 --top-k 2 --expert-hidden 48
--seq-len 32 --batch 4 --steps 30 --warmup 5 --eval-every 10 --eval-batches 2 --checkpoint-every 10 --keep 2
--max-new-tokens 40 --threads 1 --quiet"

# 1. straight through
$bin $tiny --out "$work/a"
for f in metrics.jsonl loss.svg sample.txt checkpoints/latest; do
  [ -s "$work/a/$f" ] || { echo "FAIL: $f missing or empty"; exit 1; }
done
grep -q '<svg' "$work/a/loss.svg" || { echo "FAIL: loss.svg is not an SVG"; exit 1; }
[ "$(wc -l < "$work/a/metrics.jsonl")" -eq 30 ] || { echo "FAIL: expected 30 metric lines"; exit 1; }
first=$(head -n 1 "$work/a/metrics.jsonl" | sed 's/.*"loss":\([0-9.]*\).*/\1/')
last=$(tail -n 1 "$work/a/metrics.jsonl" | sed 's/.*"loss":\([0-9.]*\).*/\1/')
awk -v f="$first" -v l="$last" 'BEGIN { exit !(l < 0.8 * f) }' || { echo "FAIL: loss $first -> $last did not fall"; exit 1; }
ls "$work/a/checkpoints" | grep -c '^step-' | grep -qx 2 || { echo "FAIL: --keep 2 not respected"; ls "$work/a/checkpoints"; exit 1; }

# 2. stop after 12 steps, resume: the losses of steps 13..30 are identical to the straight run
$bin $tiny --out "$work/b" --stop-after 12
$bin --resume --out "$work/b" --quiet
strip() { sed 's/,"elapsed_s":[0-9.]*//' "$1"; }
strip "$work/a/metrics.jsonl" > "$work/a.m"; strip "$work/b/metrics.jsonl" > "$work/b.m"
cmp -s "$work/a.m" "$work/b.m" || { echo "FAIL: resumed run differs from the straight run"; diff "$work/a.m" "$work/b.m" | head; exit 1; }
cmp -s "$work/a/sample.txt" "$work/b/sample.txt" || { echo "FAIL: samples differ after resume"; exit 1; }

# 3. generation and export from the checkpoint
out=$($bin generate --checkpoint "$work/a/checkpoints" --prompt "The " --max-new-tokens 20 --temperature 0)
case "$out" in The*) ;; *) echo "FAIL: generate output '$out'"; exit 1 ;; esac
$bin export-hf --checkpoint "$work/a/checkpoints" --out "$work/hf" > /dev/null
[ -s "$work/hf/config.json" ] && [ -s "$work/hf/model.safetensors" ] || { echo "FAIL: export-hf"; exit 1; }

# 4. bad flags: exit status 2 and one line naming the flag
for args in "--bogus 1" "--lr abc" "--router sideways" "--steps"; do
  if err=$($bin $args 2>&1); then echo "FAIL: '$args' was accepted"; exit 1; fi
  [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || { echo "FAIL: '$args' printed more than one line"; exit 1; }
  flag=$(printf '%s' "$args" | cut -d' ' -f1)
  printf '%s' "$err" | grep -q -- "$flag" || { echo "FAIL: '$args' error does not name $flag: $err"; exit 1; }
done
$bin --help | grep -q -- "--checkpoint-every" || { echo "FAIL: --help misses a flag"; exit 1; }
echo "ok: train, resume bit-exact, generate, export-hf, flag errors"
