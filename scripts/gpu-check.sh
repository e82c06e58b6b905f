#!/bin/sh
# GPU check. `sh scripts/gpu-check.sh pack` builds the CUDA path here (nvcc only, no GPU needed) and
# packs the test binaries with the host libraries they need into .gpu/; `sh .gpu/run.sh` on a
# machine with an NVIDIA GPU (CUDA 13 runtime, driver >= 580) then runs the device query, tensors in
# device memory, the fill kernel against the CPU path, compute-sanitizer (memcheck, racecheck), the
# whole-model gradient check and moe-bench. Results land in $OUT (or the current directory).
set -eu
cd "$(dirname "$0")/.."
[ "${1:-}" = pack ] || { echo "usage: sh scripts/gpu-check.sh pack"; exit 2; }
rm -rf .gpu && mkdir -p .gpu/lib .gpu/bin
cmake -S . -B .gpu/build -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_DOCS=OFF -DMOE_MPI=OFF -DMOE_NCCL=OFF -DMOE_CUDA=ON > /dev/null
cmake --build .gpu/build -j "$(nproc)" --target test_cuda test_ctx test_tensor test_model_grad moe-smoke moe-bench
cp .gpu/build/tests/core/test_cuda .gpu/build/tests/core/test_ctx .gpu/build/tests/core/test_tensor \
   .gpu/build/tests/model/test_model_grad .gpu/build/tools/moe-smoke .gpu/build/tools/moe-bench .gpu/bin/
cp -P .gpu/build/src/libmoe.so* .gpu/lib/
for f in $(ldd .gpu/lib/libmoe.so.0 .gpu/bin/test_cuda | awk '/=>/{print $3}' | sort -u |
           grep -E "cmocka|gfortran|gomp|quadmath|xxhash|openblas|cjson"); do cp -L "$f" .gpu/lib/; done
rm -rf .gpu/build
cat > .gpu/run.sh <<'RUN'
#!/bin/sh
cd "$(dirname "$0")"
OUT=${OUT:-.}
export LD_LIBRARY_PATH=$PWD/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export OMP_NUM_THREADS=8
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
echo "== moe-smoke"; ./bin/moe-smoke
echo "== test_cuda"; ./bin/test_cuda
echo "== test_ctx"; ./bin/test_ctx 2>&1 | tail -3
echo "== test_tensor"; ./bin/test_tensor 2>&1 | tail -3
echo "== compute-sanitizer memcheck"; compute-sanitizer --tool memcheck --error-exitcode 9 ./bin/test_cuda > "$OUT/memcheck.log" 2>&1; echo "rc=$?"; tail -1 "$OUT/memcheck.log"
echo "== compute-sanitizer racecheck"; compute-sanitizer --tool racecheck --error-exitcode 9 ./bin/test_cuda > "$OUT/racecheck.log" 2>&1; echo "rc=$?"; tail -1 "$OUT/racecheck.log"
echo "== test_model_grad"; ./bin/test_model_grad 2>&1 | tail -1
echo "== moe-bench"; OMP_NUM_THREADS=$(nproc) ./bin/moe-bench --steps 3
RUN
chmod +x .gpu/run.sh
du -sh .gpu
