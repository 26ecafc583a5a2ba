#!/usr/bin/env bash
# Every GPU figure in docs/benchmarks.md ("On a GPU"), in one run of about six minutes on an H200.
#
#   bash benchmarks/gpu/figures.sh OUT_DIR
#
# Needs a CUDA GPU, the package's dependencies importable, and mamba-ssm's selective scan (pip
# install -e ".[cuda]", or benchmarks/gpu/build_selective_scan.py with its --site on PYTHONPATH).
# Writes the BrLP comparisons' JSON into OUT_DIR and prints every table.
set -u
out=${1:?give an output folder}
mkdir -p "$out"
py=${PYTHON:-python3}
reference=${BRLP_REFERENCE:-../shared/anchors/brlp_reference.py}
export PYTHONUNBUFFERED=1
step() { echo; echo "== $*"; }
step "CUDA parity: our torch scan and Mamba module against mamba-ssm's kernel"
timeout 150 $py -m pytest -m cuda -v -p no:cacheprovider tests/ops/test_cuda_scan.py tests/nn/test_mamba.py
step "BrLP's settings, networks on the GPU (ours: brain-1p5mm-cpu, then brain-1p5mm)"
timeout 150 $py benchmarks/bench_vs_brlp.py --device cuda --config brain-1p5mm-cpu --threads 16 --reference "$reference" --json "$out/vs_brlp_cpuconfig.json"
timeout 100 $py benchmarks/bench_vs_brlp.py --device cuda --config brain-1p5mm --threads 16 --skip-brlp "$out/vs_brlp_cpuconfig.json" --json "$out/vs_brlp_gpuconfig.json"
step "selective scan and MambaBlock3d"
timeout 80 $py benchmarks/bench_mamba.py scan --device cuda --lengths 16384 262144 --threads 4
timeout 80 $py benchmarks/bench_mamba.py block --device cuda --grids 24x28x24 48x56x48 --channels 64 --threads 4
step "2 mm prediction"
timeout 70 $py benchmarks/bench_predict.py --config synthetic-2mm --samples 4 --steps 25 --device cuda --threads 16
step "one training step per component"
for config in brain-1p5mm synthetic-2mm synthetic-2mm-4x; do
  for component in autoencoder unet controlnet; do
    timeout 60 $py benchmarks/bench_models.py --config $config --device cuda --threads 8 --repeats 3 --component $component
  done
done
