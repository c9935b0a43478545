#!/usr/bin/env bash
# Issue #16's GPU checks in one go, on a machine with torch and a CUDA GPU (about 8 minutes on an
# H100 or H200): the Triton kernels' tests, then benchmarks/dictionary_step.py in fp32 and bf16 with
# the compiled step (trainer.compile=reduce-overhead: CUDA graphs) beside the eager dense step and
# the peers. The peers' rows need the wheels of benchmarks/gpu/wheels.sh in .whl/; without them the
# tcx rows and the plain step still run. Logs go to $OUT (or /tmp/gpu-checks).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/gpu-checks}
mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
timeout 120 python3 -m pytest -q --noconftest -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -5 | tee "$out/kernels.log"

peers=()
if python3 -c "import sae_lens, sparsify" 2> "$out/peers-import.log"; then
    peers=(saelens-relu sparsify-topk)
else
    echo "peers not importable (see peers-import.log): tcx rows and the plain step only" | tee -a "$out/gpu.txt"
fi
for dtype in fp32 bf16; do
    timeout 240 python3 benchmarks/dictionary_step.py --device cuda --dtype "$dtype" --peers-python python3 \
        --only dense "${peers[@]}" tcx-relu-dense tcx-relu-compiled tcx-topk-dense tcx-topk-compiled \
        2>&1 | tee "$out/step-$dtype.log"
done
