# Sourced by scripts/proxy and scripts/test: make sure .venv exists, runs
# Python >= 3.12 and has the project installed (again when pyproject.toml changes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLM_PROXY_VENV:-$ROOT/.venv}"

find_python() {
    local candidate
    for candidate in "${LLM_PROXY_PYTHON:-}" python3.13 python3.12 \
        $(ls -d "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV) python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "llm-proxy needs Python >= 3.12 (mitmproxy 12); set LLM_PROXY_PYTHON=/path/to/python3.12+" >&2
    return 1
}

ensure_venv() {
    local stamp="$VENV/.llm-proxy-installed" want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        local python
        python="$(find_python)"
        echo "llm-proxy: creating $VENV with $("$python" --version)" >&2
        "$python" -m venv "$VENV"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "llm-proxy: installing the project into $VENV (first run takes a minute)" >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]"
        echo "$want" > "$stamp"
    fi
}

ensure_venv
