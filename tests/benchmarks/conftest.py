"""The benchmark is a script, not a test: pytest collects nothing here (DESIGN §9)."""

collect_ignore_glob = ["*.py"]
