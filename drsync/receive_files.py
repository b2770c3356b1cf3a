"""Step 1 of DESIGN §4 on the receiver: the files of the new versions into ``files/<dir>/``.

Each file is written into ``<state>/partial/`` (resumed when a partial is there), its digest checked
as it arrives or read back; a batch is flushed with one ``syncfs`` and only then renamed into
``files/<dir>/``, the directories fsynced. ``FilesStep`` is the part of ``publish.Receiver`` that does
this; the publish steps that follow are in publish.py.
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
from .scan import hash_fd
from .scan import hash_file as hash_fd_at

BATCH_FILES = 256  # partial fds held open at once while a batch is filled
FLUSH_FILES = 4096  # files made durable by one syncfs and then renamed into files/ together
BATCH_BYTES = 256 << 20  # ... or this many bytes, whichever comes first


def _dest_error(e: OSError, drs: str, path: str) -> DrsyncError:
    # open(O_DIRECTORY|O_NOFOLLOW) on a symlink fails with ENOTDIR on Linux, not ELOOP
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafeInputError("unsafe destination: a symlink or non-directory where a directory was expected",
                                dataset=drs, path=path)
    return DestinationIOError(e.strerror or str(e), dataset=drs, path=path)



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
        """Deterministic per real file, so a crashed transfer is found and resumed."""
        return f"{xxhash.xxh3_64_hexdigest(f'{e.dir}/{e.file}'.encode('utf-8', 'surrogateescape'))}-{e.digest}.part"

    def receive_batch(self, batch: list[mf.Entry], fetch: FetchBatch, link, got: Received) -> None:
        """Fill, verify (one retry from scratch for a bad file), flush once, rename into files/."""
        partial = self.state.sub("partial")
        bad = self._fill_chunks(partial, batch, fetch, link, got, fresh=False)
        if bad:
            still_bad = self._fill_chunks(partial, [e for e, _ in bad], fetch, link, got, fresh=True)
            if still_bad:
                e, reason = still_bad[0]
                raise IntegrityError(f"{reason} (after one retry)", dataset=self.drs,
                                     path=f"{layout.FILES}/{e.dir}/{e.file}")
        fault_point("before_fsync")
        if self.durable:
            try:
                partial.syncfs()
            except OSError as err:
                for e in batch:  # a failed flush is fatal: never trust these bytes (FAULTS E3)
                    partial.unlink(self.partial_name(e))
                raise DestinationIOError(f"flush failed: {err.strerror}", dataset=self.drs, path=partial.path) from err
        self._writeback_done()
        fault_point("after_fsync")
        self._rename_into_files(partial, batch, got)

    def offsets(self, batch: list[mf.Entry], present: set[str], *, fresh: bool = False) -> list[int]:
        """Where each file's transfer resumes: the size of a usable partial, else 0. A partial that
        is not a regular file, or longer than the file, is removed (never followed: FAULTS B4).
        ``present``: the names partial/ held before the batch was filled (one listing, mostly
        empty, instead of an lstat per file)."""
        partial = self.state.sub("partial")
        out = []
        for e in batch:
            name = self.partial_name(e)
            st = partial.try_lstat(name) if name in present else None
            # an empty partial (a kill between create and first write) is removed too: the
            # caller creates offset-0 files with O_EXCL, which would fail on it (EEXIST)
            if st is not None and (fresh or not stat.S_ISREG(st.st_mode) or st.st_size > e.size
                                   or st.st_size == 0):
                partial.unlink(name)
                st = None
            out.append(st.st_size if st is not None else 0)
        return out

    def _fill_chunks(self, partial: Dir, batch: list[mf.Entry], fetch: FetchBatch, link, got: Received, *,
                     fresh: bool) -> list[tuple[mf.Entry, str]]:
        """_fill in chunks of BATCH_FILES (the partial fds held open at once). partial/ is listed
        once, before the first chunk: listed per chunk, it would hold the chunks already filled."""
        bad: list[tuple[mf.Entry, str]] = []
        present = set(partial.listdir())
        for i in range(0, len(batch), BATCH_FILES):
            bad += self._fill(partial, batch[i:i + BATCH_FILES], fetch, link, got, fresh=fresh, present=present)
        return bad

    def _fill(self, partial: Dir, batch: list[mf.Entry], fetch: FetchBatch, link, got: Received, *,
              fresh: bool, present: set[str]) -> list[tuple[mf.Entry, str]]:
        """Write the batch into partials and check digests; return the files that failed."""
        bad: list[tuple[mf.Entry, str]] = []
        todo = batch
        if link is not None:
            todo = []
            for e in batch:
                name = self.partial_name(e)
                if partial.try_lstat(name) is not None:
                    partial.unlink(name)
                try:
                    link(e, partial, name)
                except SourceChanged as why:
                    bad.append((e, str(why)))
                except OSError as err:
                    if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise _dest_error(err, self.drs, f"{layout.FILES}/{e.dir}/{e.file}") from err
                    self.events.warning("--link: cannot hard-link across filesystems here; copying instead")
                    todo.append(e)
        offsets = self.offsets(todo, present, fresh=fresh)
        announce = getattr(fetch, "announce", None)
        if announce is not None and todo:
            announce(list(zip(todo, offsets)))  # a remote source sends while the files are created
        written: dict[int, str] = {}  # id(entry) -> digest of the bytes the fetch wrote
        fds: list[int] = []
        try:
            for e, off in zip(todo, offsets):
                name = self.partial_name(e)
                try:
                    fds.append(partial.open_append(name) if off else partial.create_file(name))
                except OSError as err:
                    if announce is not None:
                        _drain(fetch, todo, fds, offsets)
                    raise _dest_error(err, self.drs, f"{layout.FILES}/{e.dir}/{e.file}") from err
            try:
                results = fetch(list(zip(todo, fds, offsets)))
            except OSError as err:
                raise _dest_error(err, self.drs, partial.path) from err
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
                got_digest = written.get(id(e)) or self._partial_digest(partial, e)
                if e.digest == mf.UNKNOWN_DIGEST:
                    # a sizes-only source (SFTP fallback): only the size could be checked (above);
                    # the digest of what arrived is what the destination manifest records
                    self.learned[e.real] = got_digest
                elif got_digest != e.digest:
                    bad.append((e, "digest mismatch: the source changed during transfer, or the link corrupts data"))
                else:
                    fault_point("after_digest")
        for e, _ in bad:
            if partial.try_lstat(self.partial_name(e)) is not None:
                partial.unlink(self.partial_name(e))
        return bad

    def _partial_digest(self, partial: Dir, e: mf.Entry) -> str:
        fd = partial.open_read(self.partial_name(e))
        try:
            return hash_fd(fd)
        finally:
            os.close(fd)

    def _rename_into_files(self, partial: Dir, ready: list[mf.Entry], got: Received) -> None:
        try:
            files = self.ds.ensure_dir(layout.FILES)
        except OSError as err:
            raise _dest_error(err, self.drs, layout.FILES) from err
        touched: dict[str, Dir] = {}
        try:
            for e in ready:
                where = f"{layout.FILES}/{e.dir}/{e.file}"
                try:
                    d = touched.get(e.dir) or touched.setdefault(e.dir, files.ensure_dir(e.dir))
                    name = self.partial_name(e)
                    try:
                        partial.rename(name, d, e.file)
                    except FileExistsError:
                        # Already there (an interrupted run): keep it if it is the same bytes.
                        fd = d.open_read(e.file)
                        try:
                            same = hash_fd(fd) == self.learned.get(e.real, e.digest)
                        finally:
                            os.close(fd)
                        if not same:
                            raise ConflictError("a different file is already published here", dataset=self.drs,
                                                path=where) from None
                        partial.unlink(name)
                except OSError as err:
                    raise _dest_error(err, self.drs, where) from err
                fault_point("after_rename")
                got.files += 1
                self.events.file_done(self.drs, where)
            if self.durable:
                for d in touched.values():
                    d.fsync()
                files.fsync()
                self.ds.fsync()
        finally:
            for d in touched.values():
                d.close()
            files.close()

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
