"""Step 1 of DESIGN §4 on the receiver: the files of the new versions into ``files/<dir>/``.

Each file is written into ``<state>/partial/<dir>/<file>`` (resumed when a partial is there), its
digest checked as it arrives or read back; a batch is flushed with one ``syncfs`` and only then moved
into ``files/<dir>/``, the directories fsynced. A files directory the destination does not have yet
(every files directory of a new version) is moved with one rename of the whole directory, not one
per file. ``FilesStep`` is the part of ``publish.Receiver`` that does this; the publish steps that
follow are in publish.py.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

import xxhash

from . import layout, writeback
from . import manifest as mf
from .errors import ConflictError, DestinationIOError, DrsyncError, IntegrityError, UnsafeInputError
from .fetch import FetchBatch, Received, SourceChanged
from .fsutil import Dir, fault_point
from .hashing import hash_fd
from .hashing import hash_file as hash_fd_at

BATCH_FILES = 256  # partial fds held open at once while a batch is filled
FLUSH_FILES = 4096  # files made durable by one syncfs and then renamed into files/ together
BATCH_BYTES = 256 << 20  # ... or this many bytes, whichever comes first


def _dest_error(e: OSError, drs: str, path: str) -> DrsyncError:
    # open(O_DIRECTORY|O_NOFOLLOW) on a symlink fails with ENOTDIR on Linux, not ELOOP
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafeInputError("unsafe destination: a symlink or non-directory where a directory was expected",
                                dataset=drs, path=path)
    return DestinationIOError(e.strerror or str(e), dataset=drs, path=path)



class PartialDirs:
    """``<state>/partial/<files dir>/``: where a batch's files arrive, under their own names, so that
    a files directory new at the destination is renamed into ``files/`` whole. Each directory is
    opened (made) when first needed and listed at most once per fill (``present``); all are closed
    together. Anything at ``partial/<dir>`` that is not a real directory is removed: partial/ is
    drsync's own scratch area, and nothing in it is trusted before its digest checks out."""

    def __init__(self, partial: Dir):
        self.partial = partial
        self.dirs: dict[str, Dir] = {}
        self._top: set[str] | None = None  # partial/'s names, listed once
        self._listed: dict[str, set[str]] = {}

    def get(self, dirname: str) -> Dir:
        d = self.dirs.get(dirname)
        if d is None:
            try:
                d = self.partial.ensure_dir(dirname)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                self.partial.remove_tree(dirname)  # a link or a file where a directory belongs
                d = self.partial.ensure_dir(dirname)
            self.dirs[dirname] = d
        return d

    def top(self) -> set[str]:
        if self._top is None:
            self._top = set(self.partial.listdir())
        return self._top

    def relist(self) -> None:
        """Forget the listings: the next fill lists afresh."""
        self._top = None
        self._listed = {}

    def present(self, dirname: str) -> set[str]:
        """The names ``partial/<dirname>`` held when first asked in this fill (mostly nothing)."""
        got = self._listed.get(dirname)
        if got is None:
            got = self._listed[dirname] = set(self.get(dirname).listdir()) if dirname in self.top() else set()
        return got

    def discard(self, e: mf.Entry) -> None:
        if e.dir not in self.dirs and e.dir not in self.top():
            return  # no directory, so no partial (and none made just to look)
        d = self.get(e.dir)
        if d.try_lstat(e.file) is not None:
            d.unlink(e.file)

    def close(self) -> None:
        for d in self.dirs.values():
            d.close()
        self.dirs.clear()


def _drain(fetch, todo: list[mf.Entry], fds: list[int], offsets: list[int]) -> None:
    """A partial could not be created after the batch was asked for: read what the source sends
    all the same (into the partials made so far, the rest into /dev/null), so that the stream stays
    in step and the error is reported as itself. A failure here yields to that error."""
    sink = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        fetch(list(zip(todo, fds + [sink] * (len(todo) - len(fds)), offsets)))
    except Exception:
        pass
    finally:
        os.close(sink)


class FilesStep:
    """Receiving files (step 1). Needs ``ds``, ``state``, ``drs``, ``events``, ``durable``, ``learned``
    and ``_writeback`` from ``publish.Receiver``, which it is a base of."""

    # --- step 1: files ---------------------------------------------------------------------------
    def receive_files(self, files: list[mf.Entry], fetch: FetchBatch, *, link: Callable | None = None) -> Received:
        """Bring every file of ``files`` into ``files/<dir>/``, verified, in flushed batches.

        A flush (one syncfs) covers up to FLUSH_FILES files or BATCH_BYTES bytes: on small files the
        flush, not the copy, is what costs. A kill before the flush leaves verified partials, which
        the next run resumes at their full size: no byte of them is sent again."""
        got = Received()
        if files:
            self._start_writeback()
        batch: list[mf.Entry] = []
        size = 0
        for e in files:
            batch.append(e)
            size += e.size
            if len(batch) >= FLUSH_FILES or size >= BATCH_BYTES:
                self.receive_batch(batch, fetch, link, got)
                batch, size = [], 0
        if batch:
            self.receive_batch(batch, fetch, link, got)
        return got

    @staticmethod
    def partial_name(e: mf.Entry) -> str:
        """A flat name, deterministic per real file and its digest: how a destination over plain SFTP
        (sftp_publish.py) names its partials, and how drsync did before ``partial/<dir>/<file>``."""
        return f"{xxhash.xxh3_64_hexdigest(f'{e.dir}/{e.file}'.encode('utf-8', 'surrogateescape'))}-{e.digest}.part"

    def receive_batch(self, batch: list[mf.Entry], fetch: FetchBatch, link, got: Received) -> None:
        """Fill, verify (one retry from scratch for a bad file), flush once, move into files/."""
        pdirs = PartialDirs(self.state.sub("partial"))
        try:
            try:
                self._adopt_flat_partials(pdirs, batch)
            except OSError as err:
                raise _dest_error(err, self.drs, pdirs.partial.path) from err
            bad = self._fill_chunks(pdirs, batch, fetch, link, got, fresh=False)
            if bad:
                still_bad = self._fill_chunks(pdirs, [e for e, _ in bad], fetch, link, got, fresh=True)
                if still_bad:
                    e, reason = still_bad[0]
                    raise IntegrityError(f"{reason} (after one retry)", dataset=self.drs,
                                         path=f"{layout.FILES}/{e.dir}/{e.file}")
            fault_point("before_fsync")
            if self.durable:
                try:
                    pdirs.partial.syncfs()
                except OSError as err:
                    for e in batch:  # a failed flush is fatal: never trust these bytes (FAULTS E3)
                        pdirs.discard(e)
                    raise DestinationIOError(f"flush failed: {err.strerror}", dataset=self.drs,
                                             path=pdirs.partial.path) from err
            self._writeback_done()
            fault_point("after_fsync")
            self._rename_into_files(pdirs, batch, got)
        finally:
            pdirs.close()

    def _adopt_flat_partials(self, pdirs: PartialDirs, batch: list[mf.Entry]) -> None:
        """Partials left by an earlier drsync lie flat in partial/, named by partial_name: move those
        of this batch to ``<dir>/<file>`` so that they are resumed, not sent again."""
        flat = {n for n in pdirs.top() if n.endswith(".part")}
        if not flat:
            return
        for e in batch:
            name = self.partial_name(e)
            if name in flat:
                d = pdirs.get(e.dir)
                if d.try_lstat(e.file) is None:
                    pdirs.partial.rename(name, d, e.file)
                else:
                    pdirs.partial.unlink(name)
        pdirs.relist()

    def offsets(self, pdirs: PartialDirs, batch: list[mf.Entry], *, fresh: bool = False) -> list[int]:
        """Where each file's transfer resumes: the size of a usable partial, else 0. A partial that
        is not a regular file, or longer than the file, is removed (never followed: FAULTS B4).
        ``pdirs.present``: what partial/ held before the batch was filled (one listing, mostly
        empty, instead of an lstat per file)."""
        out = []
        for e in batch:
            st = None
            if e.file in pdirs.present(e.dir):  # no directory is made here: that waits for the ask
                d = pdirs.get(e.dir)
                st = d.try_lstat(e.file)
                # an empty partial (a kill between create and first write) is removed too: the
                # caller creates offset-0 files with O_EXCL, which would fail on it (EEXIST)
                if st is not None and (fresh or not stat.S_ISREG(st.st_mode) or st.st_size > e.size
                                       or st.st_size == 0):
                    d.unlink(e.file)
                    st = None
            out.append(st.st_size if st is not None else 0)
        return out

    def _fill_chunks(self, pdirs: PartialDirs, batch: list[mf.Entry], fetch: FetchBatch, link, got: Received, *,
                     fresh: bool) -> list[tuple[mf.Entry, str]]:
        """_fill in chunks of BATCH_FILES (the partial fds held open at once). Each partial
        directory is listed once, before the first chunk that needs it: listed per chunk, it would
        hold the chunks already filled."""
        bad: list[tuple[mf.Entry, str]] = []
        if fresh:
            pdirs.relist()
        for i in range(0, len(batch), BATCH_FILES):
            bad += self._fill(pdirs, batch[i:i + BATCH_FILES], fetch, link, got, fresh=fresh)
        return bad

    def _fill(self, pdirs: PartialDirs, batch: list[mf.Entry], fetch: FetchBatch, link, got: Received, *,
              fresh: bool) -> list[tuple[mf.Entry, str]]:
        """Write the batch into partials and check digests; return the files that failed."""
        bad: list[tuple[mf.Entry, str]] = []
        todo = batch
        if link is not None:
            todo = []
            for e in batch:
                try:
                    pdirs.discard(e)
                    link(e, pdirs.get(e.dir), e.file)
                except SourceChanged as why:
                    bad.append((e, str(why)))
                except OSError as err:
                    if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise _dest_error(err, self.drs, f"{layout.FILES}/{e.dir}/{e.file}") from err
                    self.events.warning("--link: cannot hard-link across filesystems here; copying instead")
                    todo.append(e)
        try:
            offsets = self.offsets(pdirs, todo, fresh=fresh)  # makes partial/<dir>: no inode left?
        except OSError as err:
            raise _dest_error(err, self.drs, pdirs.partial.path) from err
        announce = getattr(fetch, "announce", None)
        if announce is not None and todo:
            announce(list(zip(todo, offsets)))  # a remote source sends while the files are created
        written: dict[int, str] = {}  # id(entry) -> digest of the bytes the fetch wrote
        fds: list[int] = []
        try:
            for e, off in zip(todo, offsets):
                try:
                    d = pdirs.get(e.dir)
                    fds.append(d.open_append(e.file) if off else d.create_file(e.file))
                except OSError as err:
                    if announce is not None:
                        _drain(fetch, todo, fds, offsets)
                    raise _dest_error(err, self.drs, f"{layout.FILES}/{e.dir}/{e.file}") from err
            try:
                results = fetch(list(zip(todo, fds, offsets)))
            except OSError as err:
                raise _dest_error(err, self.drs, pdirs.partial.path) from err
            for e, fd, off, res in zip(todo, fds, offsets, results):
                where = f"{layout.FILES}/{e.dir}/{e.file}"
                if isinstance(res, SourceChanged):
                    bad.append((e, str(res)))
                    continue
                hashed = type(res) is tuple  # hashed while written: all of [0, size) (fetch.FetchBatch)
                if hashed:
                    res, written[id(e)] = res
                try:
                    os.fchmod(fd, res & 0o777)
                    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
                    size = e.size if hashed else os.fstat(fd).st_size
                except OSError as err:
                    raise _dest_error(err, self.drs, where) from err
                got.bytes += max(0, size - off)
                self.events.advance(max(0, size - off))
                if size != e.size:
                    bad.append((e, "source file size changed during transfer"))
        finally:
            for fd in fds:
                os.close(fd)
        failed = {id(e) for e, _ in bad}
        for e in batch:
            if id(e) not in failed:
                got_digest = written.get(id(e)) or self._partial_digest(pdirs, e)
                if e.digest == mf.UNKNOWN_DIGEST:
                    # a sizes-only source (SFTP fallback): only the size could be checked (above);
                    # the digest of what arrived is what the destination manifest records
                    self.learned[e.real] = got_digest
                elif got_digest != e.digest:
                    bad.append((e, "digest mismatch: the source changed during transfer, or the link corrupts data"))
                else:
                    fault_point("after_digest")
        for e, _ in bad:
            pdirs.discard(e)
        return bad

    def _partial_digest(self, pdirs: PartialDirs, e: mf.Entry) -> str:
        fd = pdirs.get(e.dir).open_read(e.file)
        try:
            return hash_fd(fd)
        finally:
            os.close(fd)

    def _rename_into_files(self, pdirs: PartialDirs, ready: list[mf.Entry], got: Received) -> None:
        """Move the batch's verified (and flushed) partials into ``files/``. A files directory the
        destination lacks, whose partial directory holds exactly this batch's files for it, is
        renamed whole (never over anything: a directory that appeared meanwhile is filled file by
        file); otherwise each file is renamed into it. Then every directory touched is fsynced."""
        try:
            files = self.ds.ensure_dir(layout.FILES)
        except OSError as err:
            raise _dest_error(err, self.drs, layout.FILES) from err
        by_dir: dict[str, list[mf.Entry]] = {}
        for e in ready:
            by_dir.setdefault(e.dir, []).append(e)
        touched: list[Dir] = []  # files/<dir> opened to rename files into
        moved: list[Dir] = []  # partial directories renamed into files/ whole
        try:
            for dirname, group in by_dir.items():
                pd = pdirs.get(dirname)
                try:
                    d = None if self._move_whole(pdirs, pd, files, dirname, group) else files.ensure_dir(dirname)
                except OSError as err:
                    raise _dest_error(err, self.drs, f"{layout.FILES}/{dirname}") from err
                if d is None:  # moved whole
                    moved.append(pd)
                    for e in group:
                        self._done(e, got)
                    continue
                touched.append(d)
                for e in group:
                    self._rename_file(pd, d, e)
                    self._done(e, got)
                try:
                    os.rmdir(dirname, dir_fd=pdirs.partial.fd)  # emptied (partials of other batches stay)
                except OSError:
                    pass
            if self.durable:
                for d in touched + moved:
                    d.fsync()
                files.fsync()
                self.ds.fsync()
        finally:
            for d in touched:
                d.close()
            files.close()

    def _rename_file(self, pd: Dir, d: Dir, e: mf.Entry) -> None:
        """One verified partial into ``files/<dir>/``. One already there (an interrupted run) is
        kept if it holds the same bytes, else it is a conflict."""
        where = f"{layout.FILES}/{e.dir}/{e.file}"
        try:
            try:
                pd.rename(e.file, d, e.file)
            except FileExistsError:
                fd = d.open_read(e.file)
                try:
                    same = hash_fd(fd) == self.learned.get(e.real, e.digest)
                finally:
                    os.close(fd)
                if not same:
                    raise ConflictError("a different file is already published here", dataset=self.drs,
                                        path=where) from None
                pd.unlink(e.file)
        except OSError as err:
            raise _dest_error(err, self.drs, where) from err

    @staticmethod
    def _move_whole(pdirs: PartialDirs, pd: Dir, files: Dir, dirname: str, group: list[mf.Entry]) -> bool:
        """Rename ``partial/<dirname>`` to ``files/<dirname>`` when that is new and the partial
        directory holds exactly ``group``; False when the files must go one by one."""
        if files.try_lstat(dirname) is not None or set(pd.listdir()) != {e.file for e in group}:
            return False
        try:
            pdirs.partial.rename(dirname, files, dirname)  # RENAME_NOREPLACE
        except FileExistsError:
            return False
        return True

    def _done(self, e: mf.Entry, got: Received) -> None:
        fault_point("after_rename")
        got.files += 1
        self.events.file_done(self.drs, f"{layout.FILES}/{e.dir}/{e.file}")

    def resolve_digests(self, entries: list[mf.Entry], known: dict[tuple[str, str], tuple[int, str]]) -> list[mf.Entry]:
        """Fill in the digests a sizes-only source could not give: learned while receiving, else
        ``known`` (the destination manifest's, same size), else hashed from ``files/`` here."""
        out = []
        files: Dir | None = None
        try:
            for e in entries:
                if e.digest == mf.UNKNOWN_DIGEST:
                    digest = self.learned.get(e.real)
                    have = known.get(e.real)
                    if digest is None and have is not None and have[0] == e.size and have[1] != mf.UNKNOWN_DIGEST:
                        digest = have[1]
                    if digest is None:
                        where = f"{layout.FILES}/{e.dir}/{e.file}"
                        try:
                            if files is None:
                                files = self.ds.open_dir(layout.FILES)
                            with files.open_dir(e.dir) as d:
                                if d.lstat(e.file).st_size != e.size:
                                    raise ConflictError("a different file is already published here",
                                                        dataset=self.drs, path=where)
                                digest = hash_fd_at(d, e.file)
                        except OSError as err:
                            raise _dest_error(err, self.drs, where) from err
                        self.learned[e.real] = digest
                    e = e._replace(digest=digest)
                out.append(e)
        finally:
            if files is not None:
                files.close()
        return out

    def _start_writeback(self) -> None:
        """This run will flush: start writing back what is already dirty now (writeback.py)."""
        if self.durable and self._writeback is None:
            self._writeback = writeback.start(self.ds) or False

    def _writeback_done(self) -> None:
        """After a flush of our own: the background one has (nearly) nothing left; wait for it, so
        that no thread of it outlives the run."""
        if self._writeback:
            self._writeback.join()
            self._writeback = False
