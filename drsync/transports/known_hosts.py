"""known_hosts: reading (hashed names, patterns, ``@revoked``/``@cert-authority`` markers) and the
atomic append of ``--accept-new``, with OpenSSH's semantics shared by both SSH backends."""

from __future__ import annotations

import base64
import hashlib
import os
import re

from ..errors import ConnectionFailure


def host_key_name(host: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key_blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")


def _host_matches(patterns: str, name: str) -> bool:
    """OpenSSH known_hosts host field: comma-separated patterns (``*``/``?``, ``!`` negation) or
    one hashed ``|1|salt|hash`` name."""
    import hmac

    if patterns.startswith("|1|"):
        try:
            _, _, salt, digest = patterns.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, TypeError):
            return False
    hit = False
    for pat in patterns.split(","):
        neg = pat.startswith("!")
        body = pat[1:] if neg else pat  # only * and ? are wildcards ([host]:port is literal)
        rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in body)
        if re.fullmatch(rx, name, re.IGNORECASE):
            if neg:
                return False
            hit = True
    return hit


def known_host_entries(files: tuple[str, ...], host: str, port: int) -> list[tuple[str | None, str, bytes]]:
    """(marker, type, blob) of every known_hosts line naming host:port; marker is None,
    "@revoked" or "@cert-authority". Lines drsync cannot read are skipped (never trusted).

    Our own reader, on purpose: paramiko's parser fails on marker lines, and asyncssh's matcher
    falls back to port-22 entries for another port (OpenSSH does not) and then loses the
    ``@revoked`` entries of the port it was asked about."""
    out = []
    name = host_key_name(host, port)
    for f in files:
        try:
            with open(f, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConnectionFailure(f"cannot read known_hosts {f}: {e.strerror}") from None
        for line in lines:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = fields.pop(0) if fields[0].startswith("@") else None
            if len(fields) < 3 or not _host_matches(fields[0], name):
                continue
            try:
                blob = base64.b64decode(fields[2], validate=True)
            except ValueError:
                continue
            out.append((marker, fields[1], blob))
    return out


def known_keys(files: tuple[str, ...], host: str, port: int) -> list[tuple[str, bytes]]:
    """(type, blob) of every plain key recorded for host:port (hashed names included)."""
    return [(t, b) for m, t, b in known_host_entries(files, host, port) if m is None]


def revoked_keys(files: tuple[str, ...], host: str, port: int) -> set[bytes]:
    return {b for m, _, b in known_host_entries(files, host, port) if m == "@revoked"}


def record_key(files: tuple[str, ...], host: str, port: int, key_type: str, blob: bytes) -> str:
    """Append a key to the first known_hosts file atomically (temp + rename, mode 0600)."""
    path = files[0]
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    old = b""
    if os.path.exists(path):
        with open(path, "rb") as fh:
            old = fh.read()
        if old and not old.endswith(b"\n"):
            old += b"\n"
    line = f"{host_key_name(host, port)} {key_type} {base64.b64encode(blob).decode()}\n".encode()
    tmp = f"{path}.drsync-tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, old + line)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
