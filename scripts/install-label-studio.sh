#!/usr/bin/env bash
# Installs the Label Studio server into its OWN virtual environment ($LABEL_STUDIO_VENV, default
# .venv-label-studio in the project root) for the review tests against a real server. It never
# touches the project's .venv: label-studio pins Django 5.2 and its own versions of many libraries.
#
# Idempotent: a stamp file records what was installed; a second run does nothing. A failed install
# exits 1 (CI must notice).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LABEL_STUDIO_VENV="${LABEL_STUDIO_VENV:-$ROOT/.venv-label-studio}"
PYTHON="${PYTHON:-python3.11}"
# Pinned: the release whose API (projects, import with predictions, annotations, webhooks, the
# legacy token) the project's client and tests were checked against.
VERSION="1.23.2"
STAMP="$LABEL_STUDIO_VENV/.pulse-label-studio-installed"
STAMP_TEXT="label-studio==$VERSION v1"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] && [ -x "$LABEL_STUDIO_VENV/bin/label-studio" ]; then
  exit 0
fi
case "$(realpath -m "$LABEL_STUDIO_VENV")" in
  "$(realpath -m "$ROOT/.venv")")
    echo "install-label-studio: refusing to install into the project's own venv; set LABEL_STUDIO_VENV elsewhere." >&2
    exit 1
    ;;
esac
fail() {
  echo "install-label-studio: FAILED: $1 (venv: $LABEL_STUDIO_VENV). Fix the cause and rerun; \`rm -rf $LABEL_STUDIO_VENV\` starts over." >&2
  exit 1
}
trap 'fail "command \`$BASH_COMMAND\` exited $?"' ERR

echo "installing label-studio $VERSION into $LABEL_STUDIO_VENV (about 2 min) ..."
rm -f "$STAMP"
if [ ! -x "$LABEL_STUDIO_VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || fail "$PYTHON not found (set PYTHON to a Python 3.11 interpreter)"
  "$PYTHON" -m venv "$LABEL_STUDIO_VENV"
fi
# (this machine's pip configuration names local package folders that may be absent: not an error)
"$LABEL_STUDIO_VENV/bin/python" -m pip install -q -U pip 2> >(grep -v "^WARNING: Location 'file:" >&2)
"$LABEL_STUDIO_VENV/bin/python" -m pip install -q "label-studio==$VERSION" 2> >(grep -v "^WARNING: Location 'file:" >&2)
"$LABEL_STUDIO_VENV/bin/python" -c "import label_studio, sys; sys.exit(label_studio.__version__ != '$VERSION')" \
  || fail "label-studio $VERSION did not install"
echo "$STAMP_TEXT" > "$STAMP"
echo "label-studio $VERSION installed in $LABEL_STUDIO_VENV"
