"""Decoding only the fields a controller reads: a typed view of an object, applied while its JSON is parsed.

An informer's transform trims an object after it was decoded in full; a projection never builds what it leaves
out. It is a `TypedDict` (nested ones for nested objects) given to msgspec's decoder: keys it does not declare are
skipped while parsing, and what it declares comes out as plain dicts and lists, as `kube.loads` would give them.
A pod's `managedFields`, its containers' start scripts, hooks, probes and environment (most of a worker pod's
16 KiB) are then never decoded.

Guarantees:
- The result holds exactly the declared keys that the JSON has, with the JSON's values; declare leaves as `Any`,
  so no value can fail a type check. Only the shape can (a declared object that is not one, a declared list of
  objects that is not a list of objects): then the object is decoded in full with `kube.loads` instead, so
  nothing is ever dropped because a projection did not fit.
- Watch events are decoded through a small envelope first (`type`, and `object` kept raw): an ERROR event's
  Status is decoded in full, so its code, reason and message reach `ApiError`.
- `page()` decodes a list answer (`items` through the projection, the list's own metadata in full).
"""

from __future__ import annotations

from typing import Any, TypedDict

import msgspec

from rayop.runtime.kube import JSON, loads


class _Event(msgspec.Struct):
    type: str = ""
    object: msgspec.Raw = msgspec.Raw(b"null")


_EVENT = msgspec.json.Decoder(_Event)


class Projection:
    """Decodes objects of one kind keeping the keys of `shape` (a TypedDict), see the module docstring."""

    def __init__(self, shape: Any, name: str = ""):
        self.name = name or getattr(shape, "__name__", "projection")
        self._object: msgspec.json.Decoder[Any] = msgspec.json.Decoder(shape)
        page = TypedDict(f"{self.name}List", {"kind": Any, "apiVersion": Any, "metadata": Any,  # type: ignore[misc]
                                             "items": list[shape]}, total=False)
        self._page: msgspec.json.Decoder[Any] = msgspec.json.Decoder(page)
        # Objects that did not fit the shape and were decoded in full (a counter, for tests and debugging).
        self.misfits = 0

    def object(self, raw: bytes | msgspec.Raw) -> JSON:
        return self._decode(self._object, raw)

    def page(self, raw: bytes) -> JSON:
        return self._decode(self._page, raw)

    def _decode(self, decoder: msgspec.json.Decoder[Any], raw: bytes | msgspec.Raw) -> JSON:
        try:
            return decoder.decode(raw)  # type: ignore[no-any-return]
        except msgspec.DecodeError:  # a ValidationError too: a shape that does not fit, or not JSON msgspec reads
            self.misfits += 1
            return loads(bytes(raw))  # type: ignore[no-any-return]

    def event(self, line: bytes) -> JSON:
        """One watch event, `{"type": ..., "object": ...}`, its object projected (an ERROR's Status in full)."""
        try:
            head = _EVENT.decode(line)
        except msgspec.DecodeError:
            return loads(line)  # type: ignore[no-any-return]
        if head.type in ("ERROR", ""):
            return loads(line)  # type: ignore[no-any-return]
        return {"type": head.type, "object": self.object(head.object)}
