"""Renderers of a run: human text, and the drsync-report/1 JSON object of DESIGN §6."""

from __future__ import annotations

import json

from .errors import escape
from .plan import DatasetPlan
from .sync import RunResult

REPORT_FORMAT = "drsync-report/1"


def dataset_json(d: DatasetPlan) -> dict:
    return {
        "path": d.path,
        "versions_to_add": list(d.versions_to_add),
        "files_to_send": len(d.files_to_send),
        "bytes_to_send": d.bytes_to_send,
        "links_to_make": d.links_to_make,
        "naive_bytes": d.naive_bytes,
        "conflicts": list(d.conflicts),
        "extra_versions": list(d.extra_versions),
        "latest": {"source": d.latest_source, "destination": d.latest_destination},
    }


def to_json(result: RunResult) -> dict:
    ds = result.plan.datasets
    doc = {
        "format": REPORT_FORMAT,
        "command": result.command,
        "source": result.plan.source,
        "destination": result.plan.destination,
        "dry_run": result.dry_run,
        "datasets": [dataset_json(d) for d in ds],
        "totals": {
            "datasets": len(ds),
            "versions_to_add": sum(len(d.versions_to_add) for d in ds),
            "files_to_send": sum(len(d.files_to_send) for d in ds),
            "bytes_to_send": sum(d.bytes_to_send for d in ds),
            "links_to_make": sum(d.links_to_make for d in ds),
            "naive_bytes": sum(d.naive_bytes for d in ds),
            "conflicts": sum(len(d.conflicts) for d in ds),
        },
    }
    if result.command in ("push", "pull") and not result.dry_run and result.transferred is not None:
        doc["transferred"] = {"files": result.transferred.files, "bytes": result.transferred.bytes,
                              "seconds": round(result.seconds, 6)}
    if not result.durable and not result.dry_run:
        doc["no_fsync"] = True  # --no-fsync: not flushed to disk
    if result.errors:
        doc["errors"] = [{"exit_code": e.exit_code, "dataset": e.dataset, "path": e.path, "message": e.message}
                         for e in result.errors]
    return doc


def render_json(result: RunResult) -> str:
    # ensure_ascii keeps odd names (even undecodable ones) inside valid JSON.
    return json.dumps(to_json(result), indent=2, ensure_ascii=True)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def render_text(result: RunResult, *, verbose: bool = False) -> str:
    lines = []
    what = "dry run" if result.dry_run and result.command != "diff" else result.command
    lines.append(f"{what}: {escape(result.plan.source)} -> {escape(result.plan.destination)}")
    for d in result.plan.datasets:
        if d.in_sync and not d.extra_versions and not verbose:
            continue
        lines.append(f"  {escape(d.path)}")
        if d.error is not None:
            lines.append(f"    error: {d.error.line()}")
            continue
        if d.conflicts:
            lines.append(f"    CONFLICT: version(s) {', '.join(d.conflicts)} differ between the nodes; nothing written")
            continue
        if d.versions_to_add:
            lines.append(f"    versions to add: {', '.join(d.versions_to_add)}")
            lines.append(f"    files to send:   {len(d.files_to_send)} ({human_bytes(d.bytes_to_send)}); "
                         f"links to make: {d.links_to_make}; a naive copy would move {human_bytes(d.naive_bytes)}")
        if d.new_latest:
            lines.append(f"    latest: {d.latest_destination or '(none)'} -> {d.new_latest}")
        if d.extra_versions:
            verb = "delete" if d.delete_versions else "kept; --delete removes them"
            lines.append(f"    only at destination: {', '.join(d.extra_versions)} ({verb})")
        if d.in_sync:
            lines.append("    in sync")
    t = to_json(result)["totals"]
    saving = ""
    if t["naive_bytes"]:
        saving = f", {100 * (1 - t['bytes_to_send'] / t['naive_bytes']):.0f}% less than a naive copy"
    lines.append(f"total: {t['datasets']} dataset(s), {t['versions_to_add']} version(s) to add, "
                 f"{t['files_to_send']} file(s) / {human_bytes(t['bytes_to_send'])} to send{saving}, "
                 f"{t['links_to_make']} link(s), {t['conflicts']} conflict(s)")
    if result.transferred is not None and result.command in ("push", "pull") and not result.dry_run:
        x = result.transferred
        lines.append(f"transferred: {x.files} file(s), {human_bytes(x.bytes)} in {result.seconds:.2f} s")
        if not result.durable:
            lines.append("--no-fsync: nothing was flushed to disk; a power loss may lose or tear what was written")
    if result.plan.in_sync and not result.errors:
        lines.append("in sync: nothing to do")
    return "\n".join(lines)
