"""Pure rules of the drslib layout (DESIGN §1): names, versions, the canonical link. No I/O."""

from __future__ import annotations

import re

from .errors import UnsafeInputError

FILES = "files"
LATEST = "latest"
STATE = ".drsync"
MAX_VERSION_DIGITS = 18  # fits in a signed 64-bit integer; "huge" versions are refused (FAULTS A9)
NAME_MAX = 255

_VERSION_RE = re.compile(r"[0-9]{1,%d}" % MAX_VERSION_DIGITS)
# No separator, control character, NUL or lone surrogate (not UTF-8): check_name's fast path.
_PLAIN_NAME = re.compile("[^\\x00-\\x1f\\x7f/\\\\\\ud800-\\udfff]+")
_UNSAFE_CHAR = re.compile("[" + _PLAIN_NAME.pattern[2:-1])  # one character plain_name refuses
_SPECIAL_NAMES = frozenset(("", ".", "..", STATE))
_VDIR_RE = re.compile(r"v[0-9]{1,%d}" % MAX_VERSION_DIGITS)


def plain_name(name: str) -> bool:
    """True for a name that check_name accepts, decided quickly (no message on refusal)."""
    return bool(_PLAIN_NAME.fullmatch(name)) and name not in _SPECIAL_NAMES and (
        len(name) <= NAME_MAX // 4 or len(name.encode("utf-8")) <= NAME_MAX)


def plain_names(names) -> bool:
    """True when check_name accepts every name of the sequence ``names``: plain_name for a whole
    column of a manifest at once, in a few passes made in C rather than a regex call per name."""
    if not names:
        return True
    if set(map(type, names)) != {str} or not _SPECIAL_NAMES.isdisjoint(names):
        return False
    if _UNSAFE_CHAR.search("".join(names)):  # every character of every name must be safe
        return False
    return max(map(len, names)) <= NAME_MAX // 4 or all(len(n.encode("utf-8")) <= NAME_MAX for n in names)


def check_name(name: str, what: str = "name", *, dataset: str | None = None) -> str:
    """Return ``name`` if it is a safe single path component, else raise UnsafeInputError (exit 4).

    Refused: empty, ``.``, ``..``, ``/`` or ``\\`` inside, NUL, control characters, bytes that are
    not UTF-8, longer than NAME_MAX bytes, and the reserved ``.drsync``.
    """
    if type(name) is str and plain_name(name):
        return name  # the common case, checked in C; anything else gets the precise message below
    if not isinstance(name, str):
        raise UnsafeInputError(f"{what} is not a string", dataset=dataset, path=repr(name))
    problem = None
    if name in ("", ".", ".."):
        problem = "empty, '.' or '..'"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        problem = "contains a NUL or control character"
    elif name == STATE:
        problem = "is the reserved name .drsync"
    else:
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid UTF-8"
        else:
            if len(encoded) > NAME_MAX:
                problem = f"is longer than {NAME_MAX} bytes"
    if problem:
        raise UnsafeInputError(f"unsafe {what}: {problem}", dataset=dataset, path=name)
    return name


def check_component(name: str, what: str, *, dataset: str | None, where: str) -> str:
    """check_name, with the error naming the entry's whole path in the dataset (``where``), not
    just ``name``: what a walk of a version directory reports."""
    try:
        return check_name(name, what, dataset=dataset)
    except UnsafeInputError as e:
        e.path = where
        raise


def check_version(version: str, *, dataset: str | None = None) -> str:
    """Return ``version`` if it is a canonical version string (digits only), else raise (exit 4)."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise UnsafeInputError(
            f"malformed version (want 1 to {MAX_VERSION_DIGITS} digits)", dataset=dataset, path=str(version)
        )
    return version


def is_version(version) -> bool:
    """True for a canonical version string: check_version without the error."""
    return type(version) is str and bool(_VERSION_RE.fullmatch(version))


def version_key(version: str) -> tuple[int, str]:
    """Sort key of a version: numeric order (so plain integers and YYYYMMDD both sort right)."""
    return (int(version), version)


def sort_versions(versions) -> list[str]:
    return sorted(versions, key=version_key)


def is_version_dir(name: str) -> bool:
    """True for ``v<digits>`` directory names."""
    return bool(_VDIR_RE.fullmatch(name))


def looks_like_version_dir(name: str) -> bool:
    """True for names that start like a version directory (``v`` + digit): such a name that is
    not exactly ``v<digits>`` is a malformed version (``v1e3``, ``v20100101 ``)."""
    return len(name) >= 2 and name[0] == "v" and name[1].isdigit()


def split_files_dir(dirname: str, *, dataset: str | None = None) -> tuple[str, str]:
    """Split ``<name>_<version>`` at the last ``_``: ``('tos_day', '20100101')``."""
    check_name(dirname, "files directory", dataset=dataset)
    name, sep, version = dirname.rpartition("_")
    if not sep or not name:
        raise UnsafeInputError("files directory is not <name>_<version>", dataset=dataset, path=f"files/{dirname}")
    check_version(version, dataset=dataset)
    return name, version


def files_dir(name: str, version: str) -> str:
    return f"{name}_{version}"


def canonical_target(name: str, version: str, filename: str) -> str:
    """The only link target drsync writes or accepts: ``../../files/<name>_<version>/<file>``."""
    return f"../../{FILES}/{name}_{version}/{filename}"


def parse_link(target: str, name: str, filename: str, version: str, *, dataset: str | None = None) -> str:
    """Check that ``v<version>/<name>/<filename>`` -> ``target`` is canonical; return the
    ``files/`` directory it points into.

    The check is an exact string match against the canonical form (never normalise, then check):
    the target must be ``../../files/<name>_<v'>/<filename>`` with ``v' <= version``.
    """
    where = f"v{version}/{name}/{filename}"
    prefix = f"../../{FILES}/{name}_"
    suffix = f"/{filename}"
    if not (target.startswith(prefix) and target.endswith(suffix)):
        raise UnsafeInputError(f"link target not canonical: {target!r}", dataset=dataset, path=where)
    linked_version = target[len(prefix) : len(target) - len(suffix)]
    if not _VERSION_RE.fullmatch(linked_version):
        raise UnsafeInputError(f"link target not canonical: {target!r}", dataset=dataset, path=where)
    if version_key(linked_version) > version_key(version):
        raise UnsafeInputError(
            f"link points into a later version: {target!r}", dataset=dataset, path=where
        )
    return files_dir(name, linked_version)


def check_relpath(relpath: str, what: str = "dataset path") -> str:
    """Check a DRS path (``a/b/c``) component by component; ``""`` stands for the node root itself."""
    if relpath == "":
        return relpath
    for part in relpath.split("/"):
        check_name(part, what, dataset=relpath)
    return relpath
