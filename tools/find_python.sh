#!/bin/sh
# Print the path of the newest supported Python on this machine (3.13, then 3.12, then 3.11):
# `pythonX.Y` on PATH, then pyenv's installed versions. With a version (`3.11`) or a versioned
# command (`python3.11`, found the same way when it does not run as it is, e.g. a pyenv shim of
# an inactive version) as argument, look for that one only; with a path, check that one instead.
# Exit 1 with one line on stderr when there is none. Used by the Makefile and .ci/run.
SUPPORTED="3.13 3.12 3.11"
SEARCH="$SUPPORTED"

fits() {  # fits PYTHON: it runs, has venv, and is one of the supported versions
    "$1" -c 'import sys, venv, ensurepip
sys.exit(0 if "%d.%d" % sys.version_info[:2] in sys.argv[1].split() else 1)' "$SUPPORTED" \
        >/dev/null 2>&1
}
case "$1" in
    3.1[0-9]) SEARCH="$1"; set -- ;;
    python3.1[0-9]) fits "$1" || { SEARCH="${1#python}"; set --; } ;;
esac


if [ -n "$1" ]; then
    fits "$1" && { command -v "$1"; exit 0; }
    echo "error: $1 is not a supported Python with venv: this project supports Python" \
        "$SUPPORTED (3.14 has no TensorFlow wheels)" >&2
    exit 1
fi
for version in $SEARCH; do
    for candidate in "python$version" \
        $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version" \
              2>/dev/null | sort -r -V); do
        if fits "$candidate"; then command -v "$candidate"; exit 0; fi
    done
done
echo "error: no supported Python ($SEARCH) found: install Python 3.13, 3.12 or 3.11 with venv" \
    "(Debian/Ubuntu: python3.X-venv), or pass PYTHON=/path/to/python3.X" >&2
exit 1
