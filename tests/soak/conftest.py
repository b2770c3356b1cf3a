# The soak harness is a script (`python tests/soak/soak.py`), not a pytest module.
collect_ignore_glob = ["*.py"]
