"""A thread-safe cache of API objects, keyed by namespace/name, with secondary indexes.

Guarantees:
- Objects are the decoded JSON dicts the reflector received, after the informer's transform. The store hands out
  the very dicts it holds (no copy on read): callers must treat them as read-only and `copy.deepcopy` before
  editing. With `mutation_detector=True` (or RAYOP_CACHE_MUTATION_DETECTOR=1) the store keeps a private deep copy
  of every object and `check_mutations()` reports any object a reader changed; tests turn it on.
- Every write (`upsert`, `delete`, `replace`) is atomic with respect to reads and keeps all indexes consistent.
- `replace(items, scope=ns)` makes the store's content for that scope (one namespace, or everything when the scope
  is None) equal to `items` and reports what changed, including objects that disappeared: the informer turns those
  into delete notifications (tombstones) for deletions it missed while it was not watching.
- Indexes map an index value to the set of keys whose object produced it; `by_index` answers in O(matches).
  Built-in index functions: namespace, controller owner UID, labels (`key=value`).
- Transforms (`trim_object`, `make_trimmer`) reduce what is cached: managedFields and the last-applied
  annotation are dropped, fields a controller never reads can be dropped by dotted path, and short string values
  and dict keys are interned so thousands of cached objects share one copy of each. A transform edits the object it
  is given (which the reflector decoded for it alone) and returns it, or a rebuilt copy where a dict's keys were
  not interned yet (most are: the client's decoder, `kube.loads`, shares short keys already).
"""

from __future__ import annotations

import builtins
import copy
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

JSON = dict[str, Any]
IndexFunc = Callable[[JSON], Sequence[str]]

INDEX_NAMESPACE = "namespace"
INDEX_OWNER_UID = "owner-uid"
INDEX_LABEL = "label"

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class ObjectKey(NamedTuple):
    """The identity of a namespaced (or, with namespace "", cluster-scoped) object."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectKey:
        meta = obj.get("metadata") or {}
        return cls(meta.get("namespace") or "", meta.get("name") or "")

    @classmethod
    def parse(cls, text: str) -> ObjectKey:
        namespace, _, name = text.rpartition("/")
        return cls(namespace, name)


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


# -- index functions ---------------------------------------------------------------------------------------------


def index_namespace(obj: JSON) -> Sequence[str]:
    return ((obj.get("metadata") or {}).get("namespace") or "",)


def controller_owner(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference with `controller: true`, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref  # type: ignore[no-any-return]
    return None


def index_owner_uid(obj: JSON) -> Sequence[str]:
    ref = controller_owner(obj)
    return (str(ref.get("uid")),) if ref and ref.get("uid") else ()


def index_labels(obj: JSON) -> Sequence[str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return [f"{k}={v}" for k, v in labels.items()]


DEFAULT_INDEXERS: Mapping[str, IndexFunc] = {
    INDEX_NAMESPACE: index_namespace,
    INDEX_OWNER_UID: index_owner_uid,
    INDEX_LABEL: index_labels,
}


# -- transforms --------------------------------------------------------------------------------------------------

_INTERN_MAX = 24  # string values up to this length are interned (enum-like values, short names)
_intern = sys.intern


def _interned(value: Any) -> Any:
    """`value` with its short string values and its keys interned, all the way down. Dicts are edited in place;
    only a dict holding a key that is not the interned copy yet is rebuilt (the client's decoder, `kube.loads`,
    already hands out one shared copy of most short keys, so that is rare): rebuilding every dict cost more than
    decoding the object."""
    if type(value) is dict:
        for k in value:
            if _intern(k) is not k:
                return {_intern(k): _interned(v) for k, v in value.items()}
        for k, v in value.items():
            t = type(v)
            if t is str:
                if len(v) <= _INTERN_MAX:
                    value[k] = _intern(v)  # replacing the value of a key keeps the dict's size: safe while iterating
            elif t is dict or t is list:
                value[k] = _interned(v)
        return value
    if type(value) is list:
        for i, v in enumerate(value):
            t = type(v)
            if t is str:
                if len(v) <= _INTERN_MAX:
                    value[i] = _intern(v)
            elif t is dict or t is list:
                value[i] = _interned(v)
        return value
    if type(value) is str and len(value) <= _INTERN_MAX:
        return _intern(value)
    return value



def _drop_path(obj: Any, path: Sequence[str]) -> None:
    """Delete a dotted path; a `*` step walks every element of a list."""
    if not path:
        return
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(obj, list):
            for item in obj:
                _drop_path(item, rest)
        return
    if not isinstance(obj, dict) or head not in obj:
        return
    if rest:
        _drop_path(obj[head], rest)
    else:
        del obj[head]


def make_trimmer(drop: Iterable[str] = (), *, intern: bool = True) -> Callable[[JSON], JSON]:
    """A transform that drops managedFields, the last-applied annotation and the given dotted paths
    (e.g. "spec.volumes", "spec.containers.*.env"), then interns keys and short string values, in place where it
    can (a dict with a key not interned yet is rebuilt)."""
    paths = [tuple(p.split(".")) for p in drop]

    def trim(obj: JSON) -> JSON:
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
            annotations = meta.get("annotations")
            if annotations and LAST_APPLIED in annotations:
                del annotations[LAST_APPLIED]
                if not annotations:
                    del meta["annotations"]
        for path in paths:
            _drop_path(obj, path)
        return _interned(obj) if intern else obj

    return trim


trim_object = make_trimmer()


# -- the store ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One difference found by `replace`: old None = added, new None = deleted, else updated."""

    old: JSON | None
    new: JSON | None


class CacheMutationError(AssertionError):
    pass


class Store:
    """See the module docstring."""

    def __init__(
        self, indexers: Mapping[str, IndexFunc] | None = None, *, mutation_detector: bool | None = None
    ) -> None:
        self._items: dict[ObjectKey, JSON] = {}
        self._indexers: dict[str, IndexFunc] = dict(DEFAULT_INDEXERS if indexers is None else indexers)
        self._indexes: dict[str, dict[str, set[ObjectKey]]] = {name: {} for name in self._indexers}
        self._lock = threading.Lock()
        if mutation_detector is None:
            mutation_detector = os.environ.get("RAYOP_CACHE_MUTATION_DETECTOR", "") not in ("", "0")
        self._pristine: dict[ObjectKey, JSON] | None = {} if mutation_detector else None

    # -- reads --------------------------------------------------------------------------------------------------

    def get(self, key: ObjectKey) -> JSON | None:
        with self._lock:
            return self._items.get(key)

    def list(self) -> builtins.list[JSON]:
        with self._lock:
            return list(self._items.values())

    def keys(self) -> builtins.list[ObjectKey]:
        with self._lock:
            return list(self._items)

    def by_index(self, index: str, value: str) -> builtins.list[JSON]:
        with self._lock:
            keys = self._indexes[index].get(value)
            if not keys:
                return []
            return [self._items[k] for k in keys]

    def keys_by_index(self, index: str, value: str) -> builtins.list[ObjectKey]:
        with self._lock:
            return list(self._indexes[index].get(value) or ())

    def index_values(self, index: str) -> builtins.list[str]:
        with self._lock:
            return list(self._indexes[index])

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    # -- writes -------------------------------------------------------------------------------------------------

    def upsert(self, obj: JSON) -> JSON | None:
        """Store `obj` under its key; return the object it replaced, if any."""
        key = ObjectKey.of(obj)
        with self._lock:
            old = self._items.get(key)
            self._put_locked(key, old, obj)
            return old

    def delete(self, key: ObjectKey) -> JSON | None:
        """Remove the object under `key`; return it (None if it was not cached)."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._unindex_locked(key, old)
                if self._pristine is not None:
                    self._pristine.pop(key, None)
            return old

    def replace(self, items: Iterable[JSON], *, scope: str | None = None) -> builtins.list[Change]:
        """Make the scope's content equal to `items`; return the changes (unchanged objects are not reported
        but are still swapped in, so the store holds the freshest dicts)."""
        changes: builtins.list[Change] = []
        seen: set[ObjectKey] = set()
        with self._lock:
            for obj in items:
                key = ObjectKey.of(obj)
                seen.add(key)
                old = self._items.get(key)
                self._put_locked(key, old, obj)
                if old is None or resource_version(old) != resource_version(obj):
                    changes.append(Change(old, obj))
            stale = [
                k for k in self._items if k not in seen and (scope is None or k.namespace == scope)
            ]
            for key in stale:
                old = self._items.pop(key)
                self._unindex_locked(key, old)
                if self._pristine is not None:
                    self._pristine.pop(key, None)
                changes.append(Change(old, None))
        return changes

    def _put_locked(self, key: ObjectKey, old: JSON | None, obj: JSON) -> None:
        if old is not None:
            self._unindex_locked(key, old)
        self._items[key] = obj
        for name, func in self._indexers.items():
            index = self._indexes[name]
            for value in func(obj):
                bucket = index.get(value)
                if bucket is None:
                    index[value] = {key}
                else:
                    bucket.add(key)
        if self._pristine is not None:
            self._pristine[key] = copy.deepcopy(obj)

    def _unindex_locked(self, key: ObjectKey, old: JSON) -> None:
        for name, func in self._indexers.items():
            index = self._indexes[name]
            for value in func(old):
                bucket = index.get(value)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del index[value]

    # -- checks -------------------------------------------------------------------------------------------------

    def check_mutations(self) -> None:
        """Raise CacheMutationError naming every cached object a reader changed (mutation detector only)."""
        if self._pristine is None:
            return
        with self._lock:
            mutated = [str(k) for k, obj in self._items.items() if self._pristine.get(k) != obj]
        if mutated:
            raise CacheMutationError(f"cached objects were mutated by a reader: {', '.join(sorted(mutated))}")
