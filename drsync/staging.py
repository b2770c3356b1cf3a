"""Building versions' link trees in ``<state>/staging`` (step 2 of DESIGN §4, before the flush
and the rename that publish them): tasks of up to LINK_TASK links, taken by a background thread
while the files arrive and by the thread that then waits for it.

A link the destination's previous published version already has, with the same target, is made
as a hard link to that symlink (like rsync's ``--link-dest``, which hard-links symlinks too): it
is the same relative symlink under a second name, and it allocates no inode. On ext4, allocating
inodes is what a new symlink costs, and right after a big copy onto the filesystem it costs 2 to
10 times more than usual (docs/performance.md); a new version typically re-uses most of the
previous one's links. Any link that cannot be shared (no previous version, another target, a
filesystem without hard links, too many links to one inode) is made as a new symlink.

A version of staging_fork.FORK_LINKS links or more, on a local push or pull and on the agent of a push
over ssh, is built by the same tasks in a forked child instead of a thread (staging_fork.py)."""

from __future__ import annotations

import os

from . import layout
from . import manifest as mf
from .fsutil import Dir, fault_point


class Staging:
    """Builds versions' link trees in ``<state>/staging``: ``v<version>/<name>/<file>`` ->
    ``../../files/<name>_<v>/<file>``, up to LINK_TASK links per task. A background thread takes
    tasks while the files arrive; whoever then waits (publish_version) takes tasks too, so the
    links are made by one thread beside the copy and by two once the copy is done. An error, or a
    cancel, stops both at the next task; the kernel's symlink calls release the GIL."""

    def __init__(self, staging: Dir, versions: list[tuple[str, list[mf.Entry]]], drs: str,
                 published: Dir | None = None):
        import threading

        self.cancelled = False
        self.error: BaseException | None = None
        self.versions = {v for v, _ in versions}
        self._dirs: list[Dir] = []  # closed once no thread can use them (after the join)
        self._lock = threading.Lock()
        self._tasks = link_tasks(staging, versions, drs, self._dirs, published)
        self.thread = threading.Thread(target=self._work, name="drsync-staging", daemon=True)
        self.thread.start()

    @staticmethod
    def build_here(staging: Dir, versions: list[tuple[str, list[mf.Entry]]], drs: str,
                   published: Dir | None = None) -> None:
        """The same tasks, on this thread alone (a small version: a thread would cost more)."""
        dirs: list[Dir] = []
        try:
            for task in link_tasks(staging, versions, drs, dirs, published):
                task()
        finally:
            for d in dirs:
                d.close()

    def _work(self) -> None:
        while not self.cancelled:
            try:
                with self._lock:  # one generator, two threads: advanced under the lock
                    task = next(self._tasks, None)
                if task is None:
                    return
                task()
            except BaseException as err:  # noqa: BLE001 - handed to the thread that waits
                with self._lock:
                    self.error = self.error or err
                self.cancelled = True
                return

    def wait(self, cancel: bool) -> set[str]:
        """Help, then join; return the versions built, or raise what stopped the work."""
        self.cancelled = self.cancelled or cancel
        self._work()
        self.thread.join()
        for d in self._dirs:
            d.close()
        if self.error is not None and not cancel:
            raise self.error
        return set() if self.cancelled else self.versions


def previous_version(published: Dir | None, version: str) -> str | None:
    """The newest ``v<digits>`` directory name in ``published`` (the destination dataset) below
    ``version``, or None. Only a name: the caller opens it without following a symlink."""
    if published is None:
        return None
    key = layout.version_key(version)
    older = [n[1:] for n in published.listdir() if layout.is_version_dir(n) and layout.version_key(n[1:]) < key]
    return f"v{max(older, key=layout.version_key)}" if older else None


def _open_previous(published: Dir | None, version: str, dirs: list[Dir]) -> Dir | None:
    name = previous_version(published, version)
    if name is None:
        return None
    try:
        prev = published.open_dir(name)  # a real directory, never a symlink (O_NOFOLLOW)
    except OSError:
        return None
    dirs.append(prev)
    return prev


def _share_or_symlink(prev: Dir | None, nd: Dir, target: str, file: str) -> bool:
    """Make link ``file`` -> ``target`` in ``nd``: a hard link to ``prev``'s link of that name when
    it is a symlink with exactly this target, else a new symlink. True when shared."""
    if prev is not None:
        try:
            if os.readlink(file, dir_fd=prev.fd) == target:
                os.link(file, file, src_dir_fd=prev.fd, dst_dir_fd=nd.fd, follow_symlinks=False)
                return True
        except OSError:
            pass  # absent, not a symlink, EMLINK, EPERM ...: a symlink of its own
    nd.symlink(target, file)
    return False


# Links per task. Whoever waits for the staging (publish_version) takes tasks too, so the last task
# is the only work the two threads cannot share: with a whole variable directory per task (580
# links on SMALL, 10-20 ms) the waiting thread sat idle for up to that long (docs/performance.md).
LINK_TASK = 256


def link_tasks(staging: Dir, versions: list[tuple[str, list[mf.Entry]]], drs: str, dirs: list[Dir],
               published: Dir | None = None, *, fresh: bool = True):
    """For each version: its directory made afresh in staging (a crashed run's leftover removed),
    then its links in tasks of up to LINK_TASK, taking the variable directories in turn (two
    threads then rarely add to one directory at once, which the kernel serialises). With
    ``published`` (the destination dataset), links equal to those of the newest published version
    below are shared with it. The tasks depend on nothing but the arguments: two processes given
    the same entries get the same list. With ``fresh=False`` the version's directory is opened as
    another process made it, not made again (staging_fork.py)."""

    def make_links(vdir: Dir, name: str, part: list[mf.Entry], linked: dict[str, str], prev_v: Dir | None) -> None:
        # each files dir's part of the target made once per task: the loop holds the GIL that the
        # copy running beside it needs, so it does little more than the link calls
        prefix = {d: layout.canonical_target(name, linked[d], "") for d in {e.dir for e in part}}
        prev = None
        if prev_v is not None:
            try:
                prev = prev_v.open_dir(name)
            except OSError:
                prev = None
        try:
            with vdir.ensure_dir(name) as nd:
                if prev is None:
                    for e in part:
                        nd.symlink(prefix[e.dir] + e.file, e.file)
                else:
                    for e in part:
                        _share_or_symlink(prev, nd, prefix[e.dir] + e.file, e.file)
        finally:
            if prev is not None:
                prev.close()
        fault_point("staging")

    for version, entries in versions:
        vname = f"v{version}"
        by_name: dict[str, list[mf.Entry]] = {}
        for e in entries:
            by_name.setdefault(e.name, []).append(e)
        linked: dict[str, str] = {}  # files dir -> the version it belongs to (checked once per dir)
        for d in {e.dir for e in entries}:
            linked[d] = layout.split_files_dir(d, dataset=drs)[1]
        if fresh:
            staging.remove_tree(vname)
            vdir = staging.ensure_dir(vname)
        else:
            vdir = staging.open_dir(vname)
        dirs.append(vdir)
        prev_v = _open_previous(published, version, dirs)
        # the first LINK_TASK links of every variable directory, then the next ones, ...
        turns = sorted((i, name) for name, group in by_name.items() for i in range(0, len(group), LINK_TASK))
        for i, name in turns:
            yield (lambda vdir=vdir, name=name, part=by_name[name][i:i + LINK_TASK], linked=linked, prev_v=prev_v:
                   make_links(vdir, name, part, linked, prev_v))
