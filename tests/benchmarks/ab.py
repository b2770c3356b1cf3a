#!/usr/bin/env python3
"""Same-run A/B of two drsync builds on "one new version" (and rsync -a as the yardstick).

    python tests/benchmarks/ab.py [--rounds 9] [--shape SMALL|LARGE] [--local | --delay-ms MS] A=VENV B=VENV [rsync]

Each ``NAME=VENV`` is a venv with a drsync installed (``/usr/bin/python3 -m venv V && V/bin/pip install TREE``,
the interpreter the README installs drsync with: compare builds on one interpreter);
over ssh the same venv's drsync is the remote agent. The contenders run alternately (A B rsync, then
B rsync A, ...), one warm-up round, each run on a fresh ``cp -a`` of a destination holding all but the
newest version, with source and destination read and ``sync`` run before it (the traps of bench.py).
What bench.py cannot say, this does: whether a change to drsync moved its time, measured in the same
run as the build before it. The source tree is generated once into the work dir and kept for reruns.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench as B  # noqa: E402
import treegen  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("contenders", nargs="+", metavar="NAME=VENV|rsync")
    ap.add_argument("--rounds", type=int, default=9, help="timed rounds (default 9), after one warm-up")
    ap.add_argument("--shape", default="SMALL", choices=["SMALL", "LARGE"])
    ap.add_argument("--local", action="store_true", help="local destinations instead of the loopback sshd")
    ap.add_argument("--delay-ms", type=float, default=0.0, metavar="MS",
                    help="over ssh, every contender (rsync too) through a relay that delays each direction by MS "
                         "milliseconds: a link with a round trip of 2 x MS, where round trips cost what they do "
                         "across a real network (on loopback, well under a millisecond)")
    ap.add_argument("--work", default=None, help="work dir (default: a new one under /tmp, removed at the end)")
    ap.add_argument("--unscanned", nargs="+", default=[], metavar="NAME",
                    help="these contenders find the source's newest version not yet in its manifest (its stored "
                         "entry list removed before each run, as on a node where the version was just added), "
                         "so their run scans it; give a venv twice under two names to compare both ways")
    args = ap.parse_args(argv)
    if args.delay_ms and args.local:
        ap.error("--delay-ms delays the ssh link: not with --local")
    venvs = {}
    for c in args.contenders:
        if c != "rsync":
            name, sep, venv = c.partition("=")
            if not sep or not os.access(os.path.join(venv, "bin", "drsync"), os.X_OK):
                ap.error(f"{c}: want NAME=VENV with VENV/bin/drsync")
            venvs[c] = os.path.abspath(venv)
    if not venvs:
        ap.error("name at least one drsync venv")
    unscanned = set(args.unscanned)
    if unscanned - {c.partition("=")[0] for c in venvs}:
        ap.error(f"--unscanned names no contender: {', '.join(sorted(unscanned))}")
    work = Path(args.work or tempfile.mkdtemp(prefix="drsync-ab-", dir="/tmp"))
    work.mkdir(exist_ok=True)
    b = B.Bench(Path(tempfile.mkdtemp(prefix="run-", dir=work)), [])
    first = next(iter(venvs.values()))
    src = work / f"src-{args.shape}"
    made = work / f"src-{args.shape}.versions"  # written last: the source is complete, reuse it
    if made.exists():
        versions = made.read_text().split()
    else:
        shutil.rmtree(src, ignore_errors=True)
        datasets = treegen.make_node(str(src), B.SHAPES[args.shape])
        subprocess.run([f"{first}/bin/drsync", "scan", "-q", str(src)], check=True)
        versions = datasets[0].versions
        made.write_text("\n".join(versions) + "\n")
    if not args.local:
        b.start_ssh()
        if args.delay_ms:
            b.delay_link(args.delay_ms / 1000)
            print(f"# ssh through a relay delaying each direction {args.delay_ms:g} ms", flush=True)
    base = b.work / "base"
    subprocess.run([f"{first}/bin/drsync", "push", "-q", "--no-progress", "--up-to", versions[-2], str(src), str(base)],
                   check=True, env=b.env)
    times: dict[str, list[float]] = {c: [] for c in args.contenders}
    n = 0
    try:
        for r in range(args.rounds + 1):
            k = r % len(args.contenders)
            for c in args.contenders[k:] + args.contenders[:k]:
                n += 1
                dst = b.work / f"d{n:04d}"
                subprocess.run(["cp", "-a", str(base), str(dst)], check=True)
                if c.partition("=")[0] in unscanned:
                    _forget_newest(src, versions[-1])
                B.warm(str(src))
                B.warm(str(dst))
                os.sync()
                if c == "rsync":
                    argv = b.rsync(str(src), str(dst), ssh=not args.local)
                else:
                    exe = f"{venvs[c]}/bin/drsync"
                    target = str(dst) if args.local else f"{B.ALIAS}:{dst}"
                    remote = [] if args.local else ["--drsync-path", exe]
                    argv = [exe, "push", "--json", "--no-progress", *remote, str(src), target]
                wall, _cpu, _rss, rc, _out, err = B.run_child(argv, b.env, b.logs, f"{n:04d}")
                if rc != 0:
                    raise SystemExit(f"{c} exited {rc}: {err[-2000:]}")
                print(f"{'warm-up' if r == 0 else f'round {r}'}: {c.split('=')[0]:10s} {wall:.3f} s", flush=True)
                if r:
                    times[c].append(wall)
    finally:
        b.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for c, t in times.items():
        print(f"{c.split('=')[0]:10s} median {statistics.median(t):.3f} s  min {min(t):.3f} s  "
              + " ".join(f"{x:.3f}" for x in t))
    if "rsync" in times:
        ref = times["rsync"]
        for c, t in times.items():
            if c != "rsync":
                print(f"{c.split('=')[0]:10s} against rsync -a: {statistics.median(ref) / statistics.median(t):.2f}x "
                      f"median, {min(ref) / min(t):.2f}x min")
    return 0


def _forget_newest(src: Path, version: str) -> None:
    """Remove ``version``'s stored entry lists from every dataset's manifest under ``src``: the next
    refresh scans that version from the tree (drsync's default state dir, .drsync)."""
    for state in src.glob("**/.drsync/manifest"):
        for name in (f"v{version}.json", f"o{version}.json"):
            (state / name).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
