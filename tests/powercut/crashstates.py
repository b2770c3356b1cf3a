"""Crash states of a traced run: what the destination may hold after a power loss at each point.

A conservative persistence model of a file system without a journal (this machine's ext4 has
none), in the spirit of ALICE's abstract persistence models (Pillai et al., OSDI'14):

- an operation is durable only once a barrier covers it: ``syncfs`` (or ``sync``) covers every
  operation before it; ``fsync``/``fdatasync`` of a file covers that file's data, size, mode and
  times (not its directory entry); ``fsync`` of a directory covers the entries made or removed in
  it (a rename counts as an entry of its *destination* directory: the fsync of the source
  directory alone does not make it durable);
- a namespace operation (create, mkdir, symlink, link, rename, unlink, rmdir) persists atomically
  or not at all; a data operation (write, truncate, chmod, utime) may be lost, and a lost write
  leaves either the old bytes or zeros up to the new size;
- anything not covered may or may not have persisted, in any combination.

For a crash after operation ``k`` the durable operations are kept and a choice of the others is
added (``variants``); the chosen operations are replayed in log order on the tree as it was before
the run, skipping one whose target no longer resolves (a link into a directory whose mkdir was
dropped, a rename whose source was never created). States are deduplicated by a hash of the tree
they produce, then materialized as real directories for the checker.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash
from tracelog import DATA, NAMESPACE, Op, Tree

NEVER = 1 << 62


def entry_dir(op: Op) -> int | None:
    """The directory whose entries ``op`` changes (for a rename: the destination's)."""
    if op.kind == "rename":
        return op.parent2
    if op.kind in NAMESPACE:
        return op.parent
    return None


def durable_at(ops: list[Op]) -> list[int]:
    """For each op, the index of the first barrier that makes it durable (NEVER if none)."""
    out = [NEVER if not o.barrier else o.index for o in ops]
    pending = [i for i, o in enumerate(ops) if not o.barrier]
    for j, b in enumerate(ops):
        if not b.barrier:
            continue
        keep = []
        for i in pending:
            if i >= j:
                keep.append(i)
                continue
            o = ops[i]
            if b.all_inodes or (o.kind in DATA and o.ino == b.ino) or entry_dir(o) == b.ino:
                out[i] = j
            else:
                keep.append(i)
        pending = keep
    return out


def inode_exposures(ops: list[Op], dur: list[int]) -> list[tuple[Op, Op, int, int]]:
    """A stricter lens than the model above: an entry made durable by a *directory* fsync while
    the inode it names was never written (no syncfs, no fsync of that inode, since its creation).
    On ext4 without a journal ``fsync(dir)`` writes the directory's blocks, not the inode table
    blocks of new children, so such an entry may name an unwritten inode after a power loss.
    Returns (entry op, creating op, first crash point exposed, first crash point covered)."""
    created: dict[int, Op] = {}
    init: dict[int, int] = {}
    for o in ops:
        if o.kind in ("creat", "mkdir", "symlink") and o.ino is not None:
            created[o.ino] = o
            j = next((b.index for b in ops[o.index + 1:] if b.barrier and (b.all_inodes or b.ino == o.ino)), NEVER)
            init[o.ino] = j
    out = []
    for o in ops:
        if o.kind in ("rename", "link", "creat", "mkdir", "symlink") and o.ino in created:
            c = created[o.ino]
            if dur[o.index] < init[o.ino]:
                out.append((o, c, dur[o.index], init[o.ino]))
    return out


# --- replay -------------------------------------------------------------------------------------
# A state is {inode: node}; a node is a tuple (kind, mode, data, target, entries); entries is a
# dict shared with the base tree until the state changes it (copy on write).
@dataclass
class State:
    nodes: dict
    root: int


def base_state(tree: Tree) -> State:
    nodes = {}
    for ino, n in tree.inodes.items():
        nodes[ino] = (n.kind, n.mode, n.data, n.target, dict(n.entries) if n.kind == "dir" else None)
    return State(nodes, tree.root)


def replay(base: State, ops: list[Op], chosen: Iterator[int] | list[int], zero: frozenset[int] = frozenset(),
           clear: tuple[tuple[int, str, int], ...] = ()) -> State:
    """Apply ``ops[i]`` for each ``i`` in ``chosen`` (ascending) to a copy of ``base``; an op in
    ``zero`` is a lost write that left zeros (its length, at its offset) instead of its bytes.
    ``clear``: (directory, name, inode) entries removed at the end, where they still name that
    inode (what fsck does to an entry naming an inode that was never written)."""
    nodes = dict(base.nodes)
    owned: set[int] = set()

    def entries(ino: int) -> dict | None:
        n = nodes.get(ino)
        if n is None or n[0] != "dir":
            return None
        if ino not in owned:
            n = (n[0], n[1], n[2], n[3], dict(n[4]))
            nodes[ino] = n
            owned.add(ino)
        return n[4]

    for i in chosen:
        o = ops[i]
        k = o.kind
        if k in ("creat", "mkdir", "symlink"):
            ents = entries(o.parent)
            if ents is None or o.name in ents:
                continue
            if k == "creat":
                nodes[o.ino] = ("file", o.mode, b"", "", None)
            elif k == "mkdir":
                nodes[o.ino] = ("dir", o.mode, b"", "", {})
                owned.add(o.ino)
            else:
                nodes[o.ino] = ("link", 0o777, b"", o.target, None)
            ents[o.name] = o.ino
        elif k == "link":
            ents = entries(o.parent)
            if ents is None or o.ino not in nodes:
                continue
            ents[o.name] = o.ino
        elif k == "rename":
            src = nodes.get(o.parent)
            if src is None or src[0] != "dir" or src[4].get(o.name) != o.ino or entries(o.parent2) is None:
                continue
            del entries(o.parent)[o.name]
            entries(o.parent2)[o.name2] = o.ino
        elif k in ("unlink", "rmdir"):
            src = nodes.get(o.parent)
            if src is None or src[0] != "dir" or src[4].get(o.name) != o.ino:
                continue
            if k == "rmdir" and nodes[o.ino][4]:
                continue  # not empty in this state: rmdir would have failed
            del entries(o.parent)[o.name]
        elif k in DATA:
            n = nodes.get(o.ino)
            if n is None or n[0] != "file":
                continue
            kind, mode, data, target, ents = n
            if k == "write":
                payload = bytes(len(o.data)) if i in zero else o.data
                if o.offset > len(data):
                    data = data + bytes(o.offset - len(data))
                data = data[:o.offset] + payload + data[o.offset + len(payload):]
            elif k == "trunc":
                data = data[:o.size] + bytes(max(0, o.size - len(data)))
            elif k == "chmod":
                mode = o.mode
            nodes[o.ino] = (kind, mode, data, target, ents)
    for parent, name, ino in clear:
        ents = entries(parent)
        if ents is not None and ents.get(name) == ino:
            del ents[name]
    return State(nodes, base.root)


class Hasher:
    """Content hash of the tree a state materializes to (names, kinds, bytes, link text, modes;
    not times)."""

    def __init__(self) -> None:
        self._data: dict[int, tuple[bytes, str]] = {}

    def data(self, b: bytes) -> str:
        hit = self._data.get(id(b))
        if hit is None or hit[0] is not b:
            hit = (b, xxhash.xxh3_64_hexdigest(b))
            self._data[id(b)] = hit  # holds b, so its id is not reused
        return hit[1]

    def __call__(self, s: State) -> str:
        h = xxhash.xxh3_128()
        stack = [(s.root, "")]
        while stack:
            ino, path = stack.pop()
            kind, mode, data, target, ents = s.nodes[ino]
            h.update(f"{path}\0{kind}\0{mode:o}\0".encode("utf-8", "surrogateescape"))
            if kind == "file":
                h.update(self.data(data).encode())
            elif kind == "link":
                h.update(target.encode("utf-8", "surrogateescape"))
            else:
                for name in sorted(ents, reverse=True):
                    stack.append((ents[name], f"{path}/{name}"))
            h.update(b"\1")
        return h.hexdigest()


def materialize(s: State, path: str, *, blobs: str | None = None, hasher: Hasher | None = None) -> None:
    """Write the state as a real tree at ``path``. With ``blobs`` (a directory on the same file
    system), files are hard links to one copy per distinct (bytes, mode): cheap, but only for
    read-only use (the checker). Without it every file is a real copy (for a follow-up push)."""
    stack = [(s.root, path)]
    dirs = []
    while stack:
        ino, p = stack.pop()
        kind, mode, data, target, ents = s.nodes[ino]
        if kind == "dir":
            os.mkdir(p, 0o700)
            dirs.append((p, mode))
            for name, child in ents.items():
                stack.append((child, os.path.join(p, name)))
        elif kind == "link":
            os.symlink(target, p)
        elif blobs is not None:
            key = os.path.join(blobs, f"{hasher.data(data)}-{mode:o}")
            if not os.path.exists(key):
                with open(key, "wb") as fh:
                    fh.write(data)
                os.chmod(key, mode)
            os.link(key, p)
        else:
            with open(p, "wb") as fh:
                fh.write(data)
            os.chmod(p, mode)
    for p, mode in reversed(dirs):
        os.chmod(p, mode | 0o700)  # owner must be able to walk and remove it


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- the crash states ---------------------------------------------------------------------------
@dataclass
class Candidate:
    point: int  # crash after ops[point]
    variant: str  # prefix | durable | ns-only-old | ns-only-zero | drop-one:<op> | random:<n>
    chosen: list[int]
    zero: frozenset[int] = frozenset()
    clear: tuple[tuple[int, str, int], ...] = ()


def variants(ops: list[Op], dur: list[int], k: int, rng: random.Random, *, drop_cap: int = 24,
             randoms: int = 3) -> Iterator[Candidate]:
    """The crash states considered for a crash right after ``ops[k]``."""
    upto = range(k + 1)
    durable = [i for i in upto if dur[i] <= k]
    loose = [i for i in upto if dur[i] > k]
    loose_ns = [i for i in loose if ops[i].kind in NAMESPACE]
    loose_data = [i for i in loose if ops[i].kind in DATA]
    yield Candidate(k, "prefix", list(upto))
    if not loose:
        return
    yield Candidate(k, "durable", durable)
    if loose_ns:
        yield Candidate(k, "ns-only-old", sorted(durable + loose_ns))
        zeros = [i for i in loose_data if ops[i].kind in ("write", "trunc")]
        if zeros:
            yield Candidate(k, "ns-only-zero", sorted(durable + loose_ns + zeros),
                            frozenset(i for i in zeros if ops[i].kind == "write"))
    drops = loose_ns
    if len(drops) > drop_cap:
        # the latest few (the newest un-flushed changes, e.g. a version's or latest's rename) always,
        # the rest sampled
        drops = sorted(set(drops[-drop_cap // 2:]) | set(rng.sample(drops[:-drop_cap // 2], drop_cap // 2)))
    everything = list(upto)
    for d in drops:
        yield Candidate(k, f"drop-one:{d}", [i for i in everything if i != d])
    for r in range(randoms):
        pick = [i for i in loose if rng.random() < 0.5]
        lost = [i for i in loose if i not in set(pick) and ops[i].kind == "write"]
        zero = frozenset(i for i in lost if rng.random() < 0.5)
        yield Candidate(k, f"random:{r}", sorted(durable + pick + list(zero)), zero)


def strict_variants(ops: list[Op], k: int, exposures: list[tuple[Op, Op, int, int]]) -> Iterator[Candidate]:
    """States of the stricter lens of ``inode_exposures``: for a crash after ``ops[k]`` inside an
    exposure window, the prefix with the exposed entry cleared (its inode was never written, and
    fsck removes an entry naming an unallocated inode)."""
    for entry, _, start, end in exposures:
        if start <= k < end:
            parent, name = (entry.parent2, entry.name2) if entry.kind == "rename" else (entry.parent, entry.name)
            yield Candidate(k, f"inode-lost:{entry.index}", list(range(k + 1)), clear=((parent, name, entry.ino),))
