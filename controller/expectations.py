"""Expectations: what this operator has just written and its cache has not shown yet.

Guarantees:
- After `expect_created(scope, name)` (a pod the operator created, named by the server's answer) and
  `expect_deleted(scope, uid)`, `satisfied(scope, present)` is False until the cache shows every created name and
  no longer shows any deleted UID (or shows it terminating). The reconciler skips planning a scope (a worker group)
  while it is unsatisfied, so a stale cache can never make it create a second pod for the same slot or delete a
  pod twice.
- `creation_failed` / `deletion_failed` withdraw an expectation whose write did not happen.
- An expectation older than `ttl` seconds is dropped (the watch event was lost and a relist will have repaired the
  cache by then), so a scope is never blocked forever.
- Thread-safe; the clock is injectable for tests. Expectations live in memory only: after a restart the caches are
  freshly listed, so there is nothing stale to guard against.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

DEFAULT_TTL = 300.0


@dataclass
class _Scope:
    created: dict[str, float] = field(default_factory=dict)  # name -> when
    deleted: dict[str, float] = field(default_factory=dict)  # uid -> when


class Expectations:
    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._scopes: dict[Hashable, _Scope] = {}
        self._lock = threading.Lock()

    def expect_created(self, scope: Hashable, name: str) -> None:
        with self._lock:
            self._scopes.setdefault(scope, _Scope()).created[name] = self._clock()

    def expect_deleted(self, scope: Hashable, uid: str) -> None:
        with self._lock:
            self._scopes.setdefault(scope, _Scope()).deleted[uid] = self._clock()

    def creation_failed(self, scope: Hashable, name: str) -> None:
        with self._lock:
            if scope in self._scopes:
                self._scopes[scope].created.pop(name, None)

    def deletion_failed(self, scope: Hashable, uid: str) -> None:
        with self._lock:
            if scope in self._scopes:
                self._scopes[scope].deleted.pop(uid, None)

    def satisfied(self, scope: Hashable, present: Iterable[tuple[str, str, bool]]) -> bool:
        """`present`: the cached objects of the scope as (name, uid, terminating) triples.

        Clears what the cache confirms; True when nothing is outstanding.
        """
        with self._lock:
            state = self._scopes.get(scope)
            if state is None:
                return True
            names = set()
            live_uids = set()
            for name, uid, terminating in present:
                names.add(name)
                if not terminating:
                    live_uids.add(uid)
            now = self._clock()
            for name, at in list(state.created.items()):
                if name in names or now - at > self.ttl:
                    del state.created[name]
            for uid, at in list(state.deleted.items()):
                if uid not in live_uids or now - at > self.ttl:
                    del state.deleted[uid]
            if not state.created and not state.deleted:
                del self._scopes[scope]
                return True
            return False

    def expires_in(self, scope: Hashable) -> float | None:
        """Seconds until the oldest outstanding expectation of `scope` expires (0 if one has); None if none."""
        with self._lock:
            state = self._scopes.get(scope)
            if state is None:
                return None
            times = [*state.created.values(), *state.deleted.values()]
            if not times:
                return None
            return max(0.0, min(times) + self.ttl - self._clock())

    def pending(self, scope: Hashable) -> tuple[int, int]:
        """(creates, deletes) still outstanding for a scope."""
        with self._lock:
            state = self._scopes.get(scope)
            return (len(state.created), len(state.deleted)) if state else (0, 0)

    def forget(self, scope_prefix: Callable[[Hashable], bool]) -> None:
        """Drop every scope the predicate selects (e.g. all groups of a deleted `Ray`)."""
        with self._lock:
            for scope in [s for s in self._scopes if scope_prefix(s)]:
                del self._scopes[scope]
