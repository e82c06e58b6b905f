#!/bin/sh
# moe-train across processes: expert parallelism with ZeRO-1, and tensor + pipeline parallelism
# with a stop and a resume; then the 4-rank checkpoint is loaded by one process to generate text
# (resharding). usage: test_cli_mpi.sh MPIEXEC MOE_TRAIN DATA_FILE WORK_DIR [extra mpiexec flags]
set -eu
mpiexec=$1; bin=$2; data=$3; work=$4; shift 4
rm -rf "$work"; mkdir -p "$work"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
tiny="--data $data --layers 2 --d-model 32 --heads 4 --kv-heads 2 --experts 4 --top-k 2 --expert-hidden 48
--ffn-hidden 64 --seq-len 32 --batch 2 --micro-batches 2 --warmup 3 --eval-every 0 --eval-batches 1
--checkpoint-every 5 --keep 2 --max-new-tokens 20 --quiet"

# 1. dp4 with ep2 and ZeRO-1
"$mpiexec" -n 4 "$@" "$bin" $tiny --steps 10 --ep 2 --zero-stage 1 --out "$work/ep"
[ "$(wc -l < "$work/ep/metrics.jsonl")" -eq 10 ] || { echo "FAIL: ep run wrote $(wc -l < "$work/ep/metrics.jsonl") metric lines"; exit 1; }
ls "$work/ep/checkpoints" | grep -q '^step-10$' || { echo "FAIL: no 4-rank checkpoint"; exit 1; }
ls "$work/ep/checkpoints/step-10" | grep -c '^shard-' | grep -qx 4 || { echo "FAIL: expected 4 shard files"; exit 1; }

# 2. tp2 x pp2: stop after 4 steps, resume to 8; the losses equal a straight run's
"$mpiexec" -n 4 "$@" "$bin" $tiny --steps 8 --tp 2 --pp 2 --out "$work/tpa"
"$mpiexec" -n 4 "$@" "$bin" $tiny --steps 8 --tp 2 --pp 2 --out "$work/tpb" --stop-after 4
"$mpiexec" -n 4 "$@" "$bin" --resume --out "$work/tpb" --quiet
strip() { sed 's/,"elapsed_s":[0-9.]*//' "$1"; }
strip "$work/tpa/metrics.jsonl" > "$work/a.m"; strip "$work/tpb/metrics.jsonl" > "$work/b.m"
cmp -s "$work/a.m" "$work/b.m" || { echo "FAIL: tp2 x pp2 resume differs"; diff "$work/a.m" "$work/b.m" | head; exit 1; }

# 3. one process loads the 4-rank (ep2, ZeRO-1) checkpoint and generates
out=$("$bin" generate --checkpoint "$work/ep/checkpoints" --prompt "The " --max-new-tokens 10 --temperature 0)
case "$out" in The*) ;; *) echo "FAIL: generate from the 4-rank checkpoint: '$out'"; exit 1 ;; esac
echo "ok: ep2 + ZeRO-1 on 4 ranks, tp2 x pp2 stop/resume bit-exact, resharded generation on 1 rank"
