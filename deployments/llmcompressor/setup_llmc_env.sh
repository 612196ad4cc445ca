#!/usr/bin/env bash
# Create llm-compressor's environment (default: <repo>/.venv-llmc), idempotently.
#
# llm-compressor pins transformers<=5.17 (the pipeline runs 5.23), so it lives apart from the main
# environment; the parity test and the benchmark run it as a subprocess on shared data files.
# torch goes in first, alone, from the exact pin (the CPU wheel on this disk); everything else is
# then installed with torch held to that pin, so nothing can pull a CUDA build.
# requirements.lock (constraints) holds the exact transitive versions; a stamp file holding the
# hash of both files makes a second run a no-op.
#
# Usage: deployments/llmcompressor/setup_llmc_env.sh [VENV_DIR]   (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/.venv-llmc}"
python="${PYTHON:-python3.11}"
req="$here/requirements.txt"
lock="$here/requirements.lock"  # exact transitive versions (pip freeze of a working install)
stamp="$venv/.posttrain-llmc-stamp"
want="$(cat "$req" "$lock" | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
  echo "llmc env up to date: $venv"
  exit 0
fi

start=$(date +%s)
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
rm -f "$stamp"
torch_pin="$(grep -E '^torch==' "$req")"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$torch_pin"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" -c "$lock"
# Fail here, not in the middle of a test, if the install is broken.
"$venv/bin/python" -c "import llmcompressor, compressed_tensors, transformers, torch; from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier; from llmcompressor.modifiers.quantization import GPTQModifier; print('llmcompressor', llmcompressor.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
echo "$want" > "$stamp"
echo "llmc env ready: $venv in $(( $(date +%s) - start )) s ($(du -sh "$venv" | cut -f1))"
