"""FAULTS G5: a reader that loops readlink(latest) -> walk that version, checking every link
resolves and every file has the source's xxh3-128, while pushes add versions. Shared by
tests/faults/test_reader_probe.py and the soak harness."""

from __future__ import annotations

import os
import threading

import treegen
import xxhash

SHAPE = treegen.Shape(datasets=1, variables=2, files=12, versions=1, changed=0.5, added=2, removed=1, size=2048)


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return xxhash.xxh3_128_hexdigest(fh.read())


def expected_versions(src_ds: str) -> dict[str, dict[str, str]]:
    """``v<ver> -> {var/file: digest}`` of every version of a source dataset."""
    out = {}
    for name in os.listdir(src_ds):
        if name.startswith("v") and name[1:].isdigit():
            entries = {}
            for var in os.listdir(os.path.join(src_ds, name)):
                for f in os.listdir(os.path.join(src_ds, name, var)):
                    entries[f"{var}/{f}"] = _digest(os.path.join(src_ds, name, var, f))
            out[name] = entries
    return out


class Reader(threading.Thread):
    """Samples the destination dataset until stopped; ``bad`` lists what any sample saw wrong."""

    def __init__(self, dst_ds: str, expected: dict[str, dict[str, str]]):
        super().__init__(daemon=True)
        self.ds = dst_ds
        self.expected = expected
        self.samples = 0
        self.versions_seen: set[str] = set()
        self.bad: list[str] = []
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        try:
            v = os.readlink(os.path.join(self.ds, "latest"))
        except OSError as e:
            self.bad.append(f"latest missing: {e}")
            return
        want = self.expected.get(v)
        if want is None:
            self.bad.append(f"latest -> {v!r}, not a source version")
            return
        vdir = os.path.join(self.ds, v)
        got = {}
        try:
            for var in os.listdir(vdir):
                for f in os.listdir(os.path.join(vdir, var)):
                    p = os.path.join(vdir, var, f)
                    target = os.readlink(p)
                    if not target.startswith("../../files/"):
                        self.bad.append(f"{v}/{var}/{f} -> {target}: not canonical")
                    got[f"{var}/{f}"] = _digest(p)  # opening follows the link: it must resolve
        except OSError as e:
            self.bad.append(f"{v}: incomplete or unresolvable: {e}")
            return
        if got != want:
            missing = sorted(set(want) - set(got))[:3]
            wrong = sorted(k for k in want if k in got and got[k] != want[k])[:3]
            self.bad.append(f"{v}: incomplete version (missing {missing}, wrong bytes {wrong})")
            return
        self.versions_seen.add(v)

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.sample()
            self.samples += 1

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(30)
        assert not self.is_alive()
