#!/usr/bin/env bash
# The GPU paths, on a machine with a GPU (the lent device machine; not CI):
#   bash scripts/gpu_check.sh [OUT_DIR]
# Workers on "cuda" (LocalExecutor(device=...)), states hopping in CPU form, group epochs
# summing CUDA gradients (shared memory and gloo), and whether NCCL can group the ranks.
set -u
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"
timeout 420 python3 -m pytest -p no:cacheprovider -q -rA \
  tests/executors/test_local_device.py tests/executors/test_worker_device.py \
  "tests/test_hybrid.py::test_a_group_epoch_is_sgd_over_the_global_batches" 2>&1 | tee "$out/pytest.txt"
echo "pytest rc=${PIPESTATUS[0]}" | tee -a "$out/pytest.txt"
timeout 150 python3 scripts/nccl_probe.py 2>&1 | tee "$out/nccl.txt"
