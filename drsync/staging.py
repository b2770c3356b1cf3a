"""Building versions' link trees in ``<state>/staging`` (step 2 of DESIGN §4, before the flush
and the rename that publish them): one task per variable directory, taken by a background
thread while the files arrive and by the thread that then waits for it."""

from __future__ import annotations

from . import layout
from . import manifest as mf
from .fsutil import Dir, fault_point


class Staging:
    """Builds versions' link trees in ``<state>/staging``: ``v<version>/<name>/<file>`` ->
    ``../../files/<name>_<v>/<file>``, one variable directory per task. A background thread takes
    tasks while the files arrive; whoever then waits (publish_version) takes tasks too, so the
    links are made by one thread beside the copy and by two once the copy is done. An error, or a
    cancel, stops both at the next task; the kernel's symlink calls release the GIL."""

    def __init__(self, staging: Dir, versions: list[tuple[str, list[mf.Entry]]], drs: str):
        import threading

        self.cancelled = False
        self.error: BaseException | None = None
        self.versions = {v for v, _ in versions}
        self._dirs: list[Dir] = []  # closed once no thread can use them (after the join)
        self._lock = threading.Lock()
        self._tasks = link_tasks(staging, versions, drs, self._dirs)
        self.thread = threading.Thread(target=self._work, name="drsync-staging", daemon=True)
        self.thread.start()

    @staticmethod
    def build_here(staging: Dir, versions: list[tuple[str, list[mf.Entry]]], drs: str) -> None:
        """The same tasks, on this thread alone (a small version: a thread would cost more)."""
        dirs: list[Dir] = []
        try:
            for task in link_tasks(staging, versions, drs, dirs):
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


def link_tasks(staging: Dir, versions: list[tuple[str, list[mf.Entry]]], drs: str, dirs: list[Dir]):
    """For each version: its directory made afresh in staging (a crashed run's leftover removed),
    then one task per variable directory making its links."""

    def make_links(vdir: Dir, name: str, group: list[mf.Entry], linked: dict[str, str]) -> None:
        # each files dir's part of the target made once: the loop holds the GIL that the copy
        # running beside it needs, so it does little more than the symlink calls
        prefix = {d: layout.canonical_target(name, linked[d], "") for d in {e.dir for e in group}}
        with vdir.ensure_dir(name) as nd:
            for e in group:
                nd.symlink(prefix[e.dir] + e.file, e.file)
        fault_point("staging")

    for version, entries in versions:
        vname = f"v{version}"
        by_name: dict[str, list[mf.Entry]] = {}
        for e in entries:
            by_name.setdefault(e.name, []).append(e)
        linked: dict[str, str] = {}  # files dir -> the version it belongs to (checked once per dir)
        for d in {e.dir for e in entries}:
            linked[d] = layout.split_files_dir(d, dataset=drs)[1]
        staging.remove_tree(vname)
        vdir = staging.ensure_dir(vname)
        dirs.append(vdir)
        for name, group in sorted(by_name.items()):
            yield lambda vdir=vdir, name=name, group=group, linked=linked: make_links(vdir, name, group, linked)
