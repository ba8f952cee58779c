"""In-memory stand-ins for the parts the Ray reconciler is built from (`rayop.reconciler.Writer`, `Recorder`),
for unit tests of its logic. They answer as the API server does where the reconciler depends on it: AlreadyExists
for a name that is taken, NotFound for a missing object, Conflict for a UID precondition that does not hold,
generated names for `generateName`; any write can be scripted to be refused with a given error."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rayop.reconciler import DeleteOptions
from rayop.runtime.kube import ApiError

ObjectId = tuple[str, str, str]  # kind, namespace, name


def forbidden(message: str = "forbidden by policy") -> ApiError:
    return ApiError(403, "Forbidden", message)


def namespace_terminating(namespace: str = "ns", kind: str = "pods", name: str = "r-small-") -> ApiError:
    """What the API server's NamespaceLifecycle admission answers to a create in a namespace being deleted (the
    body as kube-apiserver 1.36 sends it)."""
    message = (f'{kind} "{name}" is forbidden: unable to create new content in namespace {namespace} because it is '
               "being terminated")
    return ApiError(403, "Forbidden", message, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
        "reason": "Forbidden", "code": 403,
        "details": {"name": name, "kind": kind, "causes": [{
            "reason": "NamespaceTerminating", "message": f"namespace {namespace} is being terminated",
            "field": "metadata.namespace"}]}})


def invalid(message: str = "spec: Invalid value") -> ApiError:
    return ApiError(422, "Invalid", message)


@dataclass
class Refusal:
    verb: str
    kind: str
    name: str | None
    error: ApiError
    times: int | None  # None: every time


class FakeWriter:
    """A `Writer` on a dict of objects. `calls` lists every call as (verb, kind, name) in order, refused or not;
    `statuses` the status patches per (namespace, name) of the Ray."""

    def __init__(self) -> None:
        self.objects: dict[ObjectId, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.deletes: list[tuple[ObjectId, DeleteOptions]] = []
        self.statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.refusals: list[Refusal] = []
        self._serial = itertools.count(1)

    # -- scripting ----------------------------------------------------------------------------------------------

    def refuse(self, verb: str, kind: str, error: ApiError, name: str | None = None,
               times: int | None = None) -> None:
        """Answer `verb` (create, get, delete, patch, patch_status) of `kind` (of the object `name`, or any) with
        `error`, `times` times (or always)."""
        self.refusals.append(Refusal(verb, kind, name, error, times))

    def put(self, kind: str, namespace: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store an object as if someone had created it (a UID is given when it has none)."""
        stored = copy.deepcopy(dict(obj))
        meta = stored.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._serial)}")
        meta["namespace"] = namespace
        self.objects[(kind, namespace, str(meta["name"]))] = stored
        return stored

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, _, name in self.objects if k == kind)

    def _check(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        for refusal in self.refusals:
            if refusal.verb == verb and refusal.kind == kind and refusal.name in (None, name) \
                    and refusal.times != 0:
                if refusal.times is not None:
                    refusal.times -= 1
                raise refusal.error

    # -- Writer -------------------------------------------------------------------------------------------------

    def create(self, kind: str, namespace: str, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        meta = manifest.get("metadata") or {}
        name = str(meta.get("name") or "")
        self._check("create", kind, name or str(meta.get("generateName") or ""))
        if not name:
            name = f"{meta['generateName']}{next(self._serial):05d}"
        if (kind, namespace, name) in self.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.lower()}s "{name}" already exists')
        obj = copy.deepcopy(dict(manifest))
        obj["metadata"] = {**obj.get("metadata", {}), "name": name}
        obj["metadata"].pop("generateName", None)
        return copy.deepcopy(self.put(kind, namespace, obj))

    def get(self, kind: str, namespace: str, name: str) -> Mapping[str, Any]:
        self._check("get", kind, name)
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.lower()}s "{name}" not found')
        return copy.deepcopy(obj)

    def delete(self, kind: str, namespace: str, name: str, options: DeleteOptions) -> None:
        self._check("delete", kind, name)
        self.deletes.append(((kind, namespace, name), copy.deepcopy(options)))
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.lower()}s "{name}" not found')
        wanted = (options.get("preconditions") or {}).get("uid")
        if wanted is not None and wanted != obj["metadata"]["uid"]:
            raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {wanted}, "
                                            f"UID in object meta: {obj['metadata']['uid']}")
        del self.objects[(kind, namespace, name)]

    def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self._check("patch", kind, name)
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.lower()}s "{name}" not found')
        _merge(obj, patch)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> str:
        """Records the patch; the resourceVersion it made (a new one per write, as the server gives)."""
        self._check("patch_status", "Ray", name)
        self.statuses.setdefault((namespace, name), []).append(copy.deepcopy(dict(status)))
        return f"status-{next(self._serial)}"


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386 in place."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


@dataclass(frozen=True)
class RecordedEvent:
    name: str  # of the object the Event is about
    type: str
    reason: str
    message: str


class FakeRecorder:
    """A `Recorder` that keeps what it was asked to record."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    def record(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        self.events.append(RecordedEvent(name, type_, reason, message))

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]
