#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU: builds the speed set for
# CUDA with TVM, runs it, checks it against torch, times dense and pruned, reads NVML
# energy, prints one table (benchmarks/gpu_check.py; its arguments pass through).
#
#   benchmarks/gpu_check.sh [--models resnet18,mobilenet_v2] [--ratios 0.5] ...
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh    (default: python, else python3)
#
# Needs: nvidia-smi and a GPU it lists; torch built with CUDA that sees the GPU; prunepass
# installed with its tvm extra (pip install -e '.[tvm,energy]'). It stops the run at
# --budget-minutes (default 8) plus a minute; the rows measured by then are in the JSON.
# Without a GPU, build only: python benchmarks/gpu_check.py --no-gpu
set -euo pipefail

here="${BASH_SOURCE[0]%/*}"
[[ "$here" == "${BASH_SOURCE[0]}" ]] && here=.
if [[ -z "${PYTHON:-}" ]] && ! command -v python >/dev/null 2>&1 &&
    command -v python3 >/dev/null 2>&1; then
    PYTHON=python3  # images with python3 alone
fi
PYTHON="${PYTHON:-python}"

fail() {
    echo "gpu_check.sh: $*" >&2
    exit 2
}

command -v nvidia-smi >/dev/null 2>&1 ||
    fail "nvidia-smi not found: no NVIDIA driver on this machine, so no GPU to check on" \
        "(to build for CUDA without a GPU: $PYTHON $here/gpu_check.py --no-gpu)"
gpus="$(nvidia-smi -L 2>&1)" || fail "nvidia-smi failed: ${gpus%%$'\n'*}"
[[ "$gpus" == *GPU* ]] || fail "nvidia-smi lists no GPU: ${gpus:-no output}"
command -v "$PYTHON" >/dev/null 2>&1 ||
    fail "python interpreter '$PYTHON' not found (set PYTHON=/path/to/python)"

# What the run needs from Python, each missing piece named (exit 2 on the first).
"$PYTHON" - <<'EOF' || exit 2
import sys

def missing(what):
    sys.exit(f"gpu_check.sh: {what}")

try:
    import torch
except ImportError:
    missing("torch is not installed for " + sys.executable)
if torch.version.cuda is None:
    missing(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None): "
            "install a CUDA build of torch")
if not torch.cuda.is_available():
    missing(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU "
            "(torch.cuda.is_available() is False): check the driver (nvidia-smi) and "
            "CUDA_VISIBLE_DEVICES")
for module, hint in (("tvm", "Apache TVM: pip install -e '.[tvm,energy]'"),
                     ("prunepass.backends.tvm", "prunepass with its TVM backend: "
                                                "pip install -e '.[tvm,energy]'"),
                     ("cuda.bindings.nvrtc", "NVRTC's Python binding: pip install "
                                             "cuda-bindings nvidia-cuda-nvrtc")):
    try:
        __import__(module)
    except Exception as err:  # ImportError, or prunepass's BackendError naming the install
        missing(f"cannot import {module} ({type(err).__name__}: {err}); needs {hint}")
try:
    import pynvml  # noqa: F401
except ImportError:
    print("gpu_check.sh: nvidia-ml-py is not installed: energy will read 'unavailable' "
          "(pip install nvidia-ml-py)", file=sys.stderr)
EOF

# the run's own budget, plus a minute before it is stopped
minutes=8
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --budget-minutes) minutes="${args[i + 1]:-8}" ;;
        --budget-minutes=*) minutes="${args[i]#*=}" ;;
    esac
done
limit="$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 + 60 }')"

rc=0
timeout --kill-after=15 "$limit" "$PYTHON" -u "$here/gpu_check.py" "$@" || rc=$?
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    echo "gpu_check.sh: stopped after $limit s; the rows measured before are in the JSON" >&2
fi
exit "$rc"
