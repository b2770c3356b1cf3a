"""The local transport: a node that is a directory on this machine.

Source half: manifests refreshed in place, real files read through held directory fds and copied
(a small file in one read, hashed on the way; a bigger one, or the rest of a resumed partial, with
the kernel's ``copy_file_range``), or hard-linked with ``--link``. Destination half: a locked
session running the publish protocol. The remote agent wraps exactly this class, so an ssh node
behaves as a local one does.
"""

from __future__ import annotations

import os

import xxhash

from .. import directio, layout, leftovers
from .. import manifest as mf
from ..errors import DestinationIOError, DrsyncError, UsageError
from ..events import Events
from ..fetch import FetchBatch, Received, SourceChanged, fetch_each
from ..fsutil import Dir, copy_fd, fault_point, pwrite_all
from ..manifest import Entry
from ..plan import Options
from ..publish import Receiver, _dest_error
from ..hashing import CHUNK
from ..scan import DatasetManifest, find_datasets, refresh
from ..state import Lock, StateDir


COPY_CHUNK = 4 << 20  # a big file's chunk when copied by _copy_direct (the first is 1 MiB)


class LocalSource:
    """Reads the real files of one source dataset, never following a symlink."""

    def __init__(self, ds: Dir):
        self.ds = ds
        self._files: Dir | None = None
        self._dirs: dict[str, Dir] = {}

    def _dir(self, dirname: str) -> Dir:
        d = self._dirs.get(dirname)
        if d is None:
            if self._files is None:
                self._files = self.ds.open_dir(layout.FILES)
            d = self._dirs[dirname] = self._files.open_dir(dirname)
        return d

    def open(self, e: Entry) -> int:
        """Open a real file for reading, checking it still has its manifest size."""
        return self.open_stat(e)[0]

    def open_stat(self, e: Entry) -> tuple[int, os.stat_result]:
        """open, with the file's fstat (its mode travels with it)."""
        try:
            fd, st = self._dir(e.dir).open_read_stat(e.file)
        except FileNotFoundError:
            raise SourceChanged("source file vanished during transfer") from None
        if st.st_size != e.size:
            os.close(fd)
            raise SourceChanged("source file size changed since it was scanned")
        return fd, st

    def fetch(self, e: Entry, fd: int, offset: int) -> int | tuple[int, str]:
        """Copy bytes [offset, size) of ``e`` into ``fd``; return the source's mode bits, with the
        digest of what was written for a whole file (fetch.FetchBatch)."""
        sfd, st = self.open_stat(e)
        try:
            if offset == 0 and e.size <= CHUNK:
                return st.st_mode, self._copy_hashed(sfd, fd, e.size)
            if offset == 0 and e.size >= directio.MIN_SIZE:
                out = directio.Writer(fd, e.size)
                if out.direct:
                    return st.st_mode, self._copy_direct(sfd, out, e.size)
            if offset < e.size:
                first = min(e.size, offset + (1 << 20))
                copy_fd(sfd, fd, first, offset)
                fault_point("partial_write")
                copy_fd(sfd, fd, e.size, first)
            return st.st_mode
        except OSError as err:
            if err.errno is not None and "short copy" in str(err):
                raise SourceChanged("source file shrank during transfer") from None
            raise
        finally:
            os.close(sfd)

    @staticmethod
    def _copy_hashed(sfd: int, fd: int, size: int) -> str:
        """Copy a small file (one read) and hash the bytes on the way: the receiver's digest check
        then costs no second open and read of the partial. A bigger file is left to the kernel's
        copy_file_range and read back: there the open is nothing, and this A/B-measured no faster."""
        chunks = []
        pos = 0
        while pos < size:
            chunk = os.pread(sfd, size - pos, pos)
            if not chunk:
                raise SourceChanged("source file shrank during transfer")
            chunks.append(chunk)
            pos += len(chunk)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        pwrite_all(fd, data, 0)
        fault_point("partial_write")
        return xxhash.xxh3_128_hexdigest(data)

    @staticmethod
    def _copy_direct(sfd: int, out: directio.Writer, size: int) -> str:
        """Copy a big file through two reused aligned buffers, around the page cache on the
        receiving side (directio.py), hashed on the way: no read-back of what was written. One
        chunk is read while the one before it is written (directio.WriteBehind)."""
        buffers = directio.thread_buffers(COPY_CHUNK)
        h = xxhash.xxh3_128()
        pos = i = 0
        with directio.WriteBehind(out) as behind:
            while pos < size:
                buf = buffers[i & 1]
                n = os.preadv(sfd, [buf[:min(COPY_CHUNK if pos else 1 << 20, size - pos)]], pos)
                if not n:
                    raise SourceChanged("source file shrank during transfer")
                h.update(buf[:n])
                behind.write(buf[:n], pos)
                pos += n
                i += 1
                if i == 1:
                    behind.wait()
                    fault_point("partial_write")
        return h.hexdigest()

    def fetch_batch(self, items: list[tuple[Entry, int, int]]) -> list:
        """The receiver's batch fetch (see fetch.FetchBatch): one local copy after another."""
        return fetch_each(self.fetch, items)

    def link(self, e: Entry, partial: Dir, name: str) -> None:
        """Hard-link the source's real file as ``partial/name``."""
        try:
            partial.link_from(self._dir(e.dir), e.file, name)
        except FileNotFoundError:
            raise SourceChanged("source file vanished during transfer") from None

    def close(self) -> None:
        for d in self._dirs.values():
            d.close()
        if self._files is not None:
            self._files.close()
        self._dirs.clear()
        self._files = None


class LocalDestination:
    """A locked publish session on one destination dataset."""

    def __init__(self, ds: Dir, state: StateDir, lock: Lock, receiver: Receiver, manifest: DatasetManifest):
        self.ds = ds
        self.state = state
        self._lock = lock
        self.receiver = receiver
        self.manifest = manifest

    def stage(self, versions: list[tuple[str, list[Entry]]], digest: str | None = None) -> None:
        """Step 2's links, built in staging (never visible) while step 1 runs: Receiver.stage_versions
        (``digest``: what names the entries a child forked by stage_forked loads)."""
        self.receiver.stage_versions(versions, digest=digest)

    def stage_forked(self, version: str, digest: str, load) -> None:
        """The links of ``version`` started by a forked child, which loads its entries itself
        (``load``, named by ``digest``), before this process has its own: Receiver.stage_forked."""
        self.receiver.stage_forked(version, digest, load)

    def stage_stored(self, version: str, sman: DatasetManifest) -> None:
        """``stage`` for one big version of a source manifest on this machine: a forked child reads
        its stored entry list and starts the links while this process reads the same list (for the
        plan) and then shares the links' tasks (Receiver.stage_forked, staging_fork.py)."""
        self.stage_forked(version, sman.index.versions[version].digest, lambda: sman.stored_entries(version))
        entries = sman.entries(version)
        # read again: a stored list found damaged is rebuilt from the tree, with its own digest, and
        # the child (which declines a damaged list) then has nothing to share
        self.stage([(version, entries)], digest=sman.index.versions[version].digest)

    def receive(self, files: list[Entry], src, drs: str, link=None) -> Received:
        """Step 1: bring ``files`` over from dataset ``drs`` of node ``src``."""
        return self.receiver.receive_files(files, src.fetch_batch(drs), link=link)

    def publish(self, versions: list[tuple[str, list[Entry]]], new_latest: str | None,
                delete_versions: tuple[str, ...], delete_files: tuple[tuple[str, str], ...], index: mf.Index) -> None:
        """Steps 2-4 of the protocol: versions, latest, (--delete), manifest; then clean up."""
        for v, entries in versions:
            self.receiver.publish_version(v, entries, latest=v == new_latest)
        if new_latest is not None:
            self.receiver.point_latest(new_latest)
        if delete_versions or delete_files:
            self.receiver.delete(delete_versions, delete_files)
        # entry lists rebuilt while planning (damaged ones: FAULTS D7) are saved along with the new
        self.receiver.write_manifest(index, {**self.manifest._repaired, **dict(versions)})
        self.receiver.recover()

    def resolve_digests(self, entries: list[Entry]) -> list[Entry]:
        """Digests for entries of a sizes-only source (SFTP fallback): see Receiver.resolve_digests."""
        known = {k: (x.size, x.digest) for k, x in self.manifest.index.loose.items()}
        versions = {e.dir.rpartition("_")[2] for e in entries if e.digest == mf.UNKNOWN_DIGEST}
        for v in versions & self.manifest.index.versions.keys():
            known.update({x.real: (x.size, x.digest) for x in self.manifest.entries(v)})
        return self.receiver.resolve_digests(entries, known)

    def rescan(self) -> None:
        """Rebuild the manifest from the tree alone (FAULTS D7: a conflict is never declared on the
        word of the stored index, which a flipped byte may have changed). Saved only when asked,
        by a caller that found the tree agreeing with the source: a corrupted file must stay
        visible to `verify`, never be recorded as the truth."""
        r = self.receiver
        self.manifest = refresh(self.ds, r.drs, self.state, save=False, loose=True, events=r.events,
                                durable=r.durable, checksum=True)

    def save_manifest(self) -> None:
        m = self.manifest
        self.state.save(m.index, {v: m.entries(v) for v in m.index.versions}, durable=self.receiver.durable)

    def close(self) -> None:
        try:
            self.receiver.drop_staged()  # no thread may write in staging once unlocked
        finally:
            self._lock.release()
        self.state.dir.close()
        self.ds.close()
        leftovers.hand_over("destination", self.manifest)


class LocalNode:
    """A node root (or one dataset directory) on this machine."""

    def __init__(self, path: str, options: Options, events: Events | None = None):
        self.spec = path
        self.path = path
        self.options = options
        self.events = events or Events()
        self._root: Dir | None = None
        self._open: dict[str, tuple[Dir, DatasetManifest]] = {}
        self._sources: dict[str, LocalSource] = {}

    # --- node -------------------------------------------------------------------------------
    def root(self, *, create: bool = False) -> Dir | None:
        if self._root is None:
            try:
                self._root = Dir.open_root(self.path, create=create)
            except FileNotFoundError:
                return None
            except (NotADirectoryError, FileExistsError):  # FileExistsError: makedirs over a file
                raise UsageError("not a directory", path=self.path) from None
            except OSError as e:
                raise _dest_error(e, None, self.path) if create else \
                    UsageError(f"cannot open: {e.strerror}", path=self.path) from None
        return self._root

    def close(self) -> None:
        for src in self._sources.values():
            src.close()
        for ds, _ in self._open.values():
            ds.close()
        self._sources.clear()
        self._open.clear()
        if self._root is not None:
            self._root.close()
            self._root = None

    @staticmethod
    def _rel(drs: str) -> str:
        return "" if drs == "." else drs

    # --- source half ------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        root = self.root()
        if root is None:
            raise UsageError("source does not exist", path=self.path)
        return ["." if p == "" else p for p in find_datasets(root)]

    def source_manifest(self, drs: str, *, save: bool, validate: bool = False) -> DatasetManifest:
        if drs in self._open:
            return self._open[drs][1]
        ds = self.root().walk_to(self._rel(drs))
        state = None
        try:
            state = StateDir.open(ds, drs, self.options.state_dir, create=save)
        except (OSError, DrsyncError) as e:
            self.events.warning(f"{drs}: source manifest cache unavailable ({e}); scanning without it")
        man = refresh(ds, drs, state, save=save, events=self.events, durable=self.options.fsync,
                      checksum=self.options.checksum, validate=validate)
        self._open[drs] = (ds, man)
        return man

    def source(self, drs: str) -> LocalSource:
        src = self._sources.get(drs)
        if src is None:
            src = self._sources[drs] = LocalSource(self._open[drs][0])
        return src

    def fetch_batch(self, drs: str) -> FetchBatch:
        return self.source(drs).fetch_batch

    def linker(self, drs: str):
        return self.source(drs).link

    def release_source(self, drs: str) -> None:
        src = self._sources.pop(drs, None)
        if src is not None:
            src.close()
        ds, man = self._open.pop(drs, (None, None))
        if ds is not None:
            ds.close()
        leftovers.hand_over("source", man)  # the last dataset's is left to the executable's exit

    # --- destination half -------------------------------------------------------------------
    def peek_destination(self, drs: str) -> DatasetManifest | None:
        """The destination's manifest without writing or locking anything (diff, --dry-run)."""
        root = self.root()
        if root is None:
            return None
        try:
            ds = root.walk_to(self._rel(drs))
        except (FileNotFoundError, NotADirectoryError):
            return None
        with ds:
            state = StateDir.open(ds, drs, self.options.state_dir, create=False)
            return refresh(ds, drs, state, save=False, loose=True, events=self.events, checksum=self.options.checksum)

    def open_destination(self, drs: str) -> LocalDestination:
        """Create the dataset directory if needed, take its lock, clean up after a crashed run and
        refresh its manifest (with loose files)."""
        root = self.root(create=True)
        rel = self._rel(drs)
        try:
            ds = root.walk_to(rel, create=True)
        except OSError as e:
            raise _dest_error(e, drs, os.path.join(root.path, rel)) from e
        try:
            state = StateDir.open(ds, drs, self.options.state_dir, create=True)
            lock = state.lock(wait=self.options.wait)
        except OSError as e:
            ds.close()
            raise _dest_error(e, drs, ds.path) from e
        except BaseException:
            ds.close()
            raise
        try:
            receiver = Receiver(ds, state, drs, events=self.events, durable=self.options.fsync)
            receiver.recover()
            # With --checksum the rescan is compared, never saved over what was recorded: a
            # corrupted file must stay visible to `verify`.
            man = refresh(ds, drs, state, save=not self.options.checksum, loose=True, events=self.events,
                          durable=self.options.fsync, checksum=self.options.checksum)
        except OSError as e:
            lock.release()
            ds.close()
            raise DestinationIOError(e.strerror or str(e), dataset=drs, path=e.filename or ds.path) from e
        except BaseException:
            lock.release()
            ds.close()
            raise
        return LocalDestination(ds, state, lock, receiver, man)
