"""What a run hands its receiver, and when: each stage() of a destination class and each plan the
run works out (sync.diff_dataset), recorded in order (sync._stage_early, tests of local and ssh runs)."""

from __future__ import annotations


def watch_stage_and_plan(monkeypatch, destination_class) -> list:
    """Start recording; returns the list that fills with ("stage", versions) and ("plan",
    versions_to_add) in the order they happen."""
    from drsync import sync

    events: list = []
    real_stage, real_diff = destination_class.stage, sync.diff_dataset

    def stage(self, versions):
        events.append(("stage", tuple(v for v, _ in versions)))
        return real_stage(self, versions)

    def diff(*args, **kwargs):
        plan = real_diff(*args, **kwargs)
        events.append(("plan", plan.versions_to_add))
        return plan

    monkeypatch.setattr(destination_class, "stage", stage)
    monkeypatch.setattr(sync, "diff_dataset", diff)
    return events
