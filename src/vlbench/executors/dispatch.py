"""Which job a free actor runs next: pure bookkeeping (no Ray, no torch), so it is tested on its own.

Jobs are grouped by what they read: the (reference sha256, VL text) extractions of a job, or, for pure
Qwen3-4B jobs, their prompt's text encoding. A free actor takes, in this order:

1. a job that lost its actor (retried on another actor when one is alive; bounded attempts);
2. a job of a group whose extractions the actor already holds (no VL forward);
3. the first job of a group no actor has started (one forward, then 2. serves the rest);
4. a job stolen from the group with the most jobs left, so no actor idles while work remains: one extra
   forward (~0.1 s) is cheaper than an idle GPU (~1.4 s per image).

An actor drops an extraction after the last job it runs that reads it (`release_after`): when no queued
job reads it any more. A later retry that needs it again forwards again (correct, a little slower).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Hashable


def group_key(job) -> tuple:
    """What a job reads: its extractions, or ("qwen3", prompt) for a pure Qwen3-4B job."""
    return tuple(sorted(job.extractions, key=repr)) or (("qwen3", job.prompt),)


@dataclass
class _Group:
    key: tuple
    jobs: deque = field(default_factory=deque)
    takers: set = field(default_factory=set)  # slots that ran one of its jobs


class Dispatcher:
    def __init__(self, jobs: list, max_attempts: int = 3):
        self.max_attempts = max(1, max_attempts)
        self.groups: dict[tuple, _Group] = {}  # plan order: the runner's plan already groups extractions
        for job in jobs:
            key = group_key(job)
            self.groups.setdefault(key, _Group(key)).jobs.append(job)
        self.retry: deque = deque()
        self.attempts: Counter = Counter()  # job key -> runs that ended with the actor dying
        self.avoid: dict[str, set] = {}  # job key -> slots whose actor died running it
        self.held: dict[Hashable, set] = {}  # slot -> extractions (and text encodings) its actor holds
        self.queued: Counter = Counter()  # extraction -> queued jobs that read it
        for job in jobs:
            self.queued.update(job.extractions)
        self.stolen = 0  # jobs taken from a group another actor had started

    def is_retry(self, job) -> bool:
        return self.attempts[job.key] > 0

    def pending(self) -> int:
        return len(self.retry) + sum(len(g.jobs) for g in self.groups.values())

    def next_for(self, slot: Hashable, alive: set | None = None, retries: bool = True) -> Any | None:
        """The job `slot` should run next, or None when nothing is queued. `retries=False`: not a retried job
        (the executor runs those alone on an actor, so a job that kills its actor takes no other job with it)."""
        job = self._retry_for(slot, alive) if retries else None
        if job is None:
            job = self._from_groups(slot)
        if job is not None:
            self.queued.subtract(job.extractions)
            self.held.setdefault(slot, set()).update(group_key(job))
        return job

    def next_batch_for(self, slot: Hashable, size: int, key, alive: set | None = None, retries: bool = True) -> list:
        """Up to `size` jobs for `slot` to run in shared DiT calls (`--batch`): the job `next_for` gives, then the
        next jobs of its group, from the same end, while `key(job)` (vlbench.engine.batching.batch_key) equals its
        own. A retried job, or one whose key is None, comes alone. [] when nothing is queued."""
        stolen = self.stolen
        first = self.next_for(slot, alive, retries)
        if first is None:
            return []
        batch = [first]
        shape = key(first.recipe) if size > 1 and not self.is_retry(first) else None
        group = self.groups.get(group_key(first))
        far = self.stolen > stolen  # a stolen job came from the group's far end: the batch continues there
        while shape is not None and group is not None and group.jobs and len(batch) < size:
            job = group.jobs[-1] if far else group.jobs[0]
            if key(job.recipe) != shape:
                break
            group.jobs.pop() if far else group.jobs.popleft()
            self.queued.subtract(job.extractions)
            batch.append(job)
        return batch

    def _retry_for(self, slot, alive):
        for i, job in enumerate(self.retry):
            avoided = self.avoid.get(job.key, set())
            others = (alive or {slot}) - avoided - {slot}
            if slot not in avoided or not others:  # another actor first; this one when it is the only one left
                del self.retry[i]
                return job
        return None

    def _from_groups(self, slot):
        held = self.held.get(slot, set())
        live = [g for g in self.groups.values() if g.jobs]
        if not live:
            return None
        hit = next((g for g in live if set(g.key) <= held), None)
        if hit is None:
            fresh = [g for g in live if not g.takers]
            if fresh:  # an unstarted group, preferring one that shares an extraction with what the actor holds
                hit = max(fresh, key=lambda g: len(set(g.key) & held))  # max keeps the first of equals: plan order
            else:
                hit = max(live, key=lambda g: (len(g.jobs), len(set(g.key) & held)))
                self.stolen += 1
                hit.takers.add(slot)
                return hit.jobs.pop()  # from the far end: the group's first actor keeps its order
        hit.takers.add(slot)
        return hit.jobs.popleft()

    def release_after(self, job, slot: Hashable) -> list:
        """Extractions `slot` may drop once `job` is done: no queued job reads them. Call when dispatching."""
        out = [ex for ex in job.extractions if self.queued[ex] <= 0]
        if out:
            self.held.get(slot, set()).difference_update(out)
        return out

    def lost(self, job, slot: Hashable) -> bool:
        """`job`'s actor died before it finished. Requeue it (True) unless it has used its attempts (False)."""
        self.attempts[job.key] += 1
        self.avoid.setdefault(job.key, set()).add(slot)
        if self.attempts[job.key] >= self.max_attempts:
            return False
        self.retry.append(job)
        self.queued.update(job.extractions)
        return True

    def forget(self, slot: Hashable) -> None:
        """`slot`'s actor was replaced: the new one holds nothing."""
        self.held.pop(slot, None)
