#!/usr/bin/env bash
# Wheels for an offline GPU machine whose Python (3.12) already has torch, triton and the usual
# scientific stack, but not the dictionary-step benchmark's peers: SAELens, sparsify and what they
# need beyond that image (benchmarks/gpu/peers.txt). Run where pip reaches PyPI; about 40 MB into
# .whl/, which benchmarks/gpu/run.sh installs there. The tcx rows and the kernel tests need none.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
platforms=()
for tag in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl -r benchmarks/gpu/peers.txt
# (an sdist only, pure Python: transformer-lens 3.9, which SAELens pins, imports it)
python3 -m pip wheel -q --no-deps -w .whl transformers-stream-generator==0.0.5
du -sh .whl
