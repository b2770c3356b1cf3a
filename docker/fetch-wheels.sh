#!/bin/sh
# Fill docker/wheels/ with drsync's dependencies (and what building drsync needs: pyproject.toml's
# build-system requires, and wheel) as wheels for the
# node image, using this machine's pip. When docker/wheels/ holds wheels, docker/Dockerfile installs
# from them alone (pip --no-index) and never reaches for an index: for builds whose containers cannot
# reach PyPI themselves (no network in the build, or a TLS-inspecting proxy only the host trusts).
#   docker/fetch-wheels.sh
# PYTHON: the pip to use (default python3). WHEELS_PYTHON: the image's Python (default 3.11,
# Debian 12's python3). The wheels are chosen for that Python and this machine's architecture.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
python=${PYTHON:-python3}
target=${WHEELS_PYTHON:-3.11}
arch=$(uname -m)

# pip does not widen a --platform to older manylinux tags by itself: name each glibc level up to
# Debian 12's 2.36.
platforms=""
for level in 2_5 2_12 2_17 2_24 2_28 2_31 2_34 2_35 2_36; do
    platforms="$platforms --platform manylinux_${level}_${arch}"
done

# what building drsync needs, as pyproject.toml says (the image builds it without build isolation)
requires=$(mktemp)
trap 'rm -f "$requires"' EXIT
"$python" "$here/build-requires.py" "$repo/pyproject.toml" > "$requires"

# shellcheck disable=SC2086  # $platforms is a list of options
"$python" -m pip download --quiet --disable-pip-version-check --dest "$here/wheels" \
    --only-binary=:all: --implementation cp --python-version "$target" $platforms \
    "$repo" -r "$requires" wheel
count=0
for wheel in "$here"/wheels/*.whl; do
    [ -e "$wheel" ] && count=$((count + 1))
done
echo "fetch-wheels: $count wheel(s) in $here/wheels"
