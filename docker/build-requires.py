"""Print what building drsync needs, one requirement per line: pyproject.toml's [build-system]
requires, read where it is written, for the node image (docker/Dockerfile) and its wheelhouse
(docker/fetch-wheels.sh), which install drsync without pip's build isolation.

    python3 docker/build-requires.py pyproject.toml
"""

import sys

try:
    import tomllib
except ImportError:  # Python 3.10: drsync's own dependency
    import tomli as tomllib

with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
