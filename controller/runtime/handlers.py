"""Event mapping: which reconcile keys an informer event concerns, and which events matter at all.

Guarantees:
- `own_key` maps an object to its own key; `controller_owner_key(kind, group)` maps a child to the key of its
  controlling owner of that kind and API group (the ownerReference with `controller: true`). A child whose
  controller is something else, or that has none, maps to nothing: we never adopt.
- Tombstones (deletions seen only through a relist) map like any other object: they carry the last known state.
- Predicates are pure functions of the event. `generation_changed` drops updates that leave
  `metadata.generation` unchanged (status or metadata-only writes, such as the controller's own status
  writes); adds and deletes always pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rayop.runtime.informer import MODIFIED, Event
from rayop.runtime.store import ObjectKey, controller_owner

Mapper = Callable[[Event], Iterable[ObjectKey]]
Predicate = Callable[[Event], bool]


def own_key(event: Event) -> Iterable[ObjectKey]:
    return (event.key,)


def _group_of(api_version: str) -> str:
    group, _, _ = api_version.rpartition("/")
    return group


def controller_owner_key(kind: str, group: str) -> Mapper:
    """Map a child object to its controlling owner's key, when that owner is of `kind` in API `group`."""

    def mapper(event: Event) -> Iterable[ObjectKey]:
        ref = controller_owner(event.obj)
        if ref is None or ref.get("kind") != kind or _group_of(str(ref.get("apiVersion") or "")) != group:
            return ()
        return (ObjectKey(event.key.namespace, str(ref.get("name") or "")),)

    return mapper


def generation_changed(event: Event) -> bool:
    if event.type != MODIFIED or event.old is None:
        return True
    old_gen = (event.old.get("metadata") or {}).get("generation")
    new_gen = (event.obj.get("metadata") or {}).get("generation")
    return bool(old_gen != new_gen)


def any_event(event: Event) -> bool:
    return True
