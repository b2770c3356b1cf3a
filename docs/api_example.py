"""The library API in one runnable script: build two nodes, diff, push, verify, watch progress.

Run it from anywhere drsync is installed:  python docs/api_example.py
"""

import os
import tempfile

import drsync
from drsync.demo.example import DATASET, add_version, build_node


class Progress(drsync.Events):
    """Print what the library reports; override only the hooks you want."""

    def start(self, dataset, files, nbytes):
        print(f"  start  {dataset.rsplit('/', 2)[-2]}: {files} file(s), {nbytes} bytes")

    def advance(self, nbytes):
        self.moved = getattr(self, "moved", 0) + nbytes

    def file_done(self, dataset, relpath):
        print(f"  done   {relpath}")

    def finish(self, dataset):
        print(f"  finish ({getattr(self, 'moved', 0)} bytes copied)")

    def warning(self, message):
        print(f"  warning: {message}")


with tempfile.TemporaryDirectory() as tmp:
    node_a, node_b = os.path.join(tmp, "node-a"), os.path.join(tmp, "node-b")
    build_node(node_a, upto=2)                       # versions 20091023 and 20100101

    # 1. The plan: writes nothing anywhere.
    result = drsync.diff(node_a, node_b)
    for d in result.plan.datasets:
        print(d.path)
        print("  versions to add:", d.versions_to_add)
        print("  files to send:", len(d.files_to_send), "bytes:", d.bytes_to_send,
              "links:", d.links_to_make, "naive bytes:", d.naive_bytes)
    print("diff exit code:", result.exit_code)       # 1: there is work to do

    # 2. Push everything up to 20100101 (the whole of node A for now), with a progress hook.
    result = drsync.push(node_a, node_b, drsync.Options(up_to="20100101"), Progress())
    print("push exit code:", result.exit_code, "transferred:", result.transferred)

    # 3. Node A publishes a third version; only its new files move.
    add_version(node_a, 3)
    result = drsync.push(node_a, node_b, drsync.Options(), Progress())
    d = result.plan.datasets[0]
    print("added:", d.versions_to_add, "latest:", d.latest_destination, "->", d.new_latest)
    print("push exit code:", result.exit_code, "transferred:", result.transferred)
    print("in sync now:", drsync.diff(node_a, node_b).exit_code == 0)

    # 4. The health check, re-reading every byte.
    report = drsync.verify(node_b, checksum=True)
    print("verify:", report.datasets == [DATASET], report.checked_files, "links,",
          len(report.findings), "findings, exit code", report.exit_code)

    # 5. Damage is a finding, not an exception: flip one byte in place (same size), and only
    #    checksum=True notices.
    bad = os.path.join(node_b, DATASET, "files", "thetao_20091023", "thetao_1.nc")
    os.chmod(bad, 0o644)
    with open(bad, "r+b") as fh:
        fh.write(b"T")
    print("without checksum:", len(drsync.verify(node_b).findings), "findings")
    for f in drsync.verify(node_b, checksum=True).findings:
        print("finding:", f.path, "-", f.problem)
