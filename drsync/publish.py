"""The receiver side of DESIGN §4, as named steps, plus recovery from a crashed run.

Order, per dataset (each step is a ``fault_point`` the crash tests kill at):
1. ``receive_files`` (receive_files.py): each file into ``<state>/partial/<dir>/`` (resumed if a partial is there), digest
   checked; one flush for the batch; renames into ``files/<dir>/``; the directories fsynced.
2. ``publish_version``: ``v<ver>`` built under ``<state>/staging/``, renamed into place with
   RENAME_NOREPLACE: it appears whole or not at all, and never replaces anything.
3. ``point_latest``: the new symlink, made in staging (with the newest version, so that its flush
   covers it), renamed over ``latest``.
4. ``write_manifest``; then leftovers removed.
A kill anywhere leaves every visible ``v*`` whole and ``latest`` on a whole version.
"""

from __future__ import annotations

import os
import stat

from . import layout
from . import manifest as mf
from .errors import ConflictError, DestinationIOError, DrsyncError, UnsafeInputError
from .events import Events
from .fsutil import Dir, fault_point
from .receive_files import FilesStep, _dest_error
from .staging import Staging
from .staging_fork import ForkedStaging
from .state import StateDir

LATEST_TMP = ".latest.drsync-tmp"
PARALLEL_LINKS = 2000  # a version with at least this many links is built by two threads (Staging)


class Receiver(FilesStep):
    """Publishes into one destination dataset, holding its directory fd and its state."""

    def __init__(self, ds: Dir, state: StateDir, drs: str, *, events: Events | None = None, durable: bool = True):
        self.ds = ds
        self.state = state
        self.drs = drs
        self.events = events or Events()
        self.durable = durable
        # digests computed here for sizes-only entries (SFTP fallback source): (dir, file) -> digest
        self.learned: dict[tuple[str, str], str] = {}
        self._staging: Staging | ForkedStaging | None = None  # the background link building (stage_versions)
        self._built: set[str] = set()  # versions whose links stage_versions made in staging
        self._writeback = None  # the background writeback of others' dirty data (writeback.py)
        if os.fstat(state.dir.fd).st_dev != os.fstat(ds.fd).st_dev:
            raise DestinationIOError("--state-dir must be on the same filesystem as the destination "
                                     "(renames into place must be atomic)", dataset=drs, path=state.dir.path)

    # --- recovery -------------------------------------------------------------------------------
    def recover(self) -> None:
        """Remove what a crashed run left that is not worth keeping: staging and tmp links.
        Partials stay: they are resumed, and only trusted after their digest checks out."""
        fault_point("cleanup")
        self._clear_staging()
        st = self.ds.try_lstat(LATEST_TMP)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            self.ds.unlink(LATEST_TMP)
        # A manifest write killed between its temp file and the rename (fsutil.write_atomic).
        mdir = self.state.sub("manifest")
        for name in mdir.listdir():
            if name.startswith(".") and ".tmp" in name:
                mdir.unlink(name)


    # --- step 2: versions ------------------------------------------------------------------------
    def _check_files_dirs(self, entries: list[mf.Entry]) -> None:
        """Refuse to publish links into a ``files/<dir>`` that is a symlink (or not a directory):
        the links would resolve outside the dataset. One lstat per directory, not per file."""
        if not entries:
            return
        try:
            with self.ds.open_dir(layout.FILES) as files:
                for dirname in sorted({e.dir for e in entries}):
                    st = files.try_lstat(dirname)
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        raise UnsafeInputError("unsafe destination: not a real directory", dataset=self.drs,
                                               path=f"{layout.FILES}/{dirname}")
        except OSError as err:
            raise _dest_error(err, self.drs, layout.FILES) from err

    def stage_versions(self, versions: list[tuple[str, list[mf.Entry]]], digest: str | None = None) -> None:
        """Start building the link trees of ``versions`` in staging on a background thread, so that
        the kernel makes the links while the files arrive. Links are relative names, valid before
        their targets exist, and staging is never visible: nothing here is published. Each
        ``publish_version`` waits for this work (lending a hand), then flushes and renames.
        After stage_forked: the forked child's version with its index ``digest``, whose tasks this
        process then shares; any other versions stop the child and go to the thread instead."""
        if isinstance(self._staging, ForkedStaging):
            if len(versions) == 1 and digest is not None and self._staging.attach(*versions[0], digest):
                self._start_writeback()
                return
            self.wait_staged(cancel=True)
        if versions and self._staging is None:
            self._start_writeback()
            self._staging = Staging(self.state.sub("staging"), versions, self.drs, self.ds)

    def stage_forked(self, version: str, digest: str, load) -> None:
        """Start a child that reads ``version``'s stored entry list (``load``, checked against the
        index ``digest``) and builds its links in staging, before this process has parsed the list
        (staging_fork.py); stage_versions then gives this process's own list, to share the tasks."""
        if self._staging is None:
            try:
                self._staging = ForkedStaging(self.state.sub("staging"), version, digest, load, self.drs, self.ds)
            except OSError:
                pass  # no process to spare (EAGAIN, ENOMEM): stage_versions starts the thread instead


    def wait_staged(self, *, cancel: bool = False) -> None:
        """Wait for the background staging (stopped early with ``cancel``); raise its error."""
        job, self._staging = self._staging, None
        if job is not None:
            self._built |= job.wait(cancel)

    def drop_staged(self) -> None:
        """End of a session: stop the background staging and remove the version trees it built
        that were not published (a failed run). A killed run leaves them: recover() removes them."""
        started = self._staging is not None or self._built
        self.wait_staged(cancel=True)
        if started:
            try:
                self._clear_staging()
            except (OSError, DrsyncError):
                pass  # the run's own error is what the user needs; the next run cleans up

    def _clear_staging(self) -> None:
        """Remove everything in staging: nothing there is published, or ever will be as it is."""
        staging = self.state.sub("staging")
        for name in staging.listdir():
            staging.remove_tree(name)

    def publish_version(self, version: str, entries: list[mf.Entry], *, latest: bool = False) -> None:
        """Build ``v<version>`` in staging (or take what stage_versions built), flush, then rename
        it into place; never over anything. With ``latest`` (this version becomes the new
        ``latest``) the new link is made in staging too, before the flush, for ``point_latest``."""
        vname = f"v{version}"
        try:
            self.wait_staged()
            staging = self.state.sub("staging")
            if version not in self._built:
                if len(entries) >= PARALLEL_LINKS:
                    # two threads (this one and a helper), one variable directory at a time
                    Staging(staging, [(version, entries)], self.drs, self.ds).wait(False)
                else:
                    Staging.build_here(staging, [(version, entries)], self.drs, self.ds)
            self._check_files_dirs(entries)
            if latest:
                # Made here so that the flush below also writes the new link's inode: point_latest
                # then fsyncs only the dataset directory, and on a file system without a journal a
                # directory fsync does not write a new child's inode (docs/powerloss.md).
                self._make_latest_tmp(staging, version)
            if self.durable:
                # one flush of the filesystem for every link and directory made in staging, not
                # an fsync per variable directory (tens of them in a large dataset)
                staging.syncfs()
                self._writeback_done()
            fault_point("staging_done")
            staging.rename(vname, self.ds, vname)
        except FileExistsError as err:
            raise ConflictError("version already exists at the destination", dataset=self.drs, path=vname) from err
        except OSError as err:
            raise _dest_error(err, self.drs, vname) from err
        if self.durable:
            self.ds.fsync()
        fault_point("after_version")

    # --- step 3: latest --------------------------------------------------------------------------
    def point_latest(self, version: str) -> None:
        """Swap ``latest`` to ``v<version>`` atomically (new link made in staging, renamed over it)."""
        st = self.ds.try_lstat(layout.LATEST)
        if st is not None and not stat.S_ISLNK(st.st_mode):
            raise UnsafeInputError("destination `latest` is not a symlink; drsync will not replace it",
                                   dataset=self.drs, path=layout.LATEST)
        try:
            # The new link is made in staging (same filesystem: checked in __init__), not beside
            # `latest`, so a kill here leaves residue only under the state dir (FAULTS §7.1 I6).
            staging = self.state.sub("staging")
            st = staging.try_lstat(LATEST_TMP)
            if st is None or not stat.S_ISLNK(st.st_mode) or staging.readlink(LATEST_TMP) != f"v{version}":
                # not made (and flushed) by publish_version: `latest` moves to a version already here
                self._make_latest_tmp(staging, version)
                if self.durable:
                    staging.syncfs()
            fault_point("latest_tmp")
            staging.rename(LATEST_TMP, self.ds, layout.LATEST, replace=True)
            if self.durable:
                self.ds.fsync()
        except OSError as err:
            raise _dest_error(err, self.drs, layout.LATEST) from err
        fault_point("after_latest")

    @staticmethod
    def _make_latest_tmp(staging: Dir, version: str) -> None:
        if staging.try_lstat(LATEST_TMP) is not None:
            staging.remove_tree(LATEST_TMP)
        staging.symlink(f"v{version}", LATEST_TMP)

    # --- --delete ---------------------------------------------------------------------------------
    def delete(self, versions: tuple[str, ...], files: tuple[tuple[str, str], ...]) -> None:
        """Remove extra versions (each vanishes at once: renamed into staging first) and the real
        files only they used. Links are removed, never followed."""
        staging = self.state.sub("staging")
        try:
            for v in versions:
                doomed = f"deleted-v{v}"
                staging.remove_tree(doomed)
                self.ds.rename(f"v{v}", staging, doomed)
                staging.remove_tree(doomed)
            if files:
                with self.ds.open_dir(layout.FILES) as fdir:
                    for dirname in sorted({d for d, _ in files}):
                        with fdir.open_dir(dirname) as d:
                            for dn, fn in files:
                                if dn == dirname and d.try_lstat(fn) is not None:
                                    d.unlink(fn)
                            empty = not d.listdir()
                        if empty:
                            os.rmdir(dirname, dir_fd=fdir.fd)
            if self.durable:
                self.ds.fsync()
        except OSError as err:
            raise _dest_error(err, self.drs, self.ds.path) from err

    # --- step 4: manifest ------------------------------------------------------------------------
    def write_manifest(self, index: mf.Index, new_entries: dict[str, list[mf.Entry]]) -> None:
        fault_point("manifest")
        try:
            self.state.save(index, new_entries, durable=self.durable)
        except OSError as err:
            raise _dest_error(err, self.drs, os.path.join(self.state.dir.path, "manifest")) from err
