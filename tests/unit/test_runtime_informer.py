"""The informer as a sink: event normalisation, tombstones, late handlers, mapping to owner keys."""

from __future__ import annotations

from typing import Any, cast

from rayop.runtime.handlers import controller_owner_key, generation_changed, own_key
from rayop.runtime.informer import ADDED, DELETED, MODIFIED, Event, Informer
from rayop.runtime.kube import KubeClient, Resource
from rayop.runtime.store import ObjectKey

PODS = Resource("", "v1", "pods", "Pod")


def obj(name: str, rv: str, ns: str = "a", gen: int = 1, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": ns, "name": name, "resourceVersion": rv, "generation": gen,
                            "managedFields": [{"x": 1}]}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"metadata": meta}


def informer(namespaces: list[str] | None = None) -> tuple[Informer, list[Event]]:
    inf = Informer(cast(KubeClient, None), PODS, namespaces=namespaces, mutation_detector=True)
    seen: list[Event] = []
    inf.add_handler(seen.append)
    return inf, seen


def summary(events: list[Event]) -> list[tuple[str, str, bool]]:
    return [(e.type, e.key.name, e.final_state_unknown) for e in events]


def test_one_reflector_per_namespace_or_one_for_all() -> None:
    assert [r.path for r in Informer(cast(KubeClient, None), PODS).reflectors] == ["/api/v1/pods"]
    inf = Informer(cast(KubeClient, None), PODS, namespaces=["x", "y"])
    assert [r.path for r in inf.reflectors] == ["/api/v1/namespaces/x/pods", "/api/v1/namespaces/y/pods"]


def test_watch_events_are_normalised_against_the_cache() -> None:
    inf, seen = informer()
    inf.apply(ADDED, obj("p", "1"))
    inf.apply(ADDED, obj("p", "1"))  # replayed after a rewatch: nothing new
    inf.apply(ADDED, obj("p", "2"))  # already cached: an update
    inf.apply(MODIFIED, obj("p", "2"))
    inf.apply(DELETED, obj("p", "3"))
    assert summary(seen) == [(ADDED, "p", False), (MODIFIED, "p", False), (DELETED, "p", False)]
    assert seen[1].old is not None and seen[1].old["metadata"]["resourceVersion"] == "1"
    assert "managedFields" not in seen[0].obj["metadata"], "handlers see the transformed object"
    assert len(inf.store) == 0
    inf.store.check_mutations()


def test_relist_emits_tombstones_for_deletions_missed_in_the_gap() -> None:
    inf, seen = informer(["a", "b"])
    inf.replace([obj("p1", "1"), obj("p2", "1")], "1", "a")
    inf.replace([obj("q1", "1", ns="b")], "1", "b")
    seen.clear()
    inf.replace([obj("p2", "5"), obj("p3", "6")], "6", "a")
    assert sorted(summary(seen)) == [(ADDED, "p3", False), (DELETED, "p1", True), (MODIFIED, "p2", False)]
    tomb = next(e for e in seen if e.type == DELETED)
    assert tomb.obj["metadata"]["resourceVersion"] == "1", "a tombstone carries the last known state"
    assert ObjectKey("b", "q1") in inf.store


def test_late_handler_gets_the_cache_replayed_and_failing_handlers_are_isolated() -> None:
    inf, seen = informer()
    inf.replace([obj("p1", "1"), obj("p2", "1")], "1", None)
    late: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    inf.add_handler(broken)
    inf.add_handler(late.append)
    assert sorted(e.key.name for e in late) == ["p1", "p2"]
    inf.apply(MODIFIED, obj("p1", "2"))
    assert late[-1].type == MODIFIED and seen[-1].type == MODIFIED


def test_sync_state_follows_every_reflector() -> None:
    inf = Informer(cast(KubeClient, None), PODS, namespaces=["a", "b"])
    assert not inf.has_synced()
    inf.reflectors[0].synced.set()
    assert not inf.has_synced()
    inf.reflectors[1].synced.set()
    assert inf.has_synced()
    assert inf.wait_for_sync(0)


def test_owner_mapping_and_predicates() -> None:
    ray_ref = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "name": "r1", "uid": "u", "controller": True}
    to_owner = controller_owner_key("Ray", "ray.k8s.io")
    assert list(to_owner(Event(ADDED, obj("p", "1", owner=ray_ref)))) == [ObjectKey("a", "r1")]
    assert list(to_owner(Event(DELETED, obj("p", "1", owner=ray_ref), final_state_unknown=True))) == [
        ObjectKey("a", "r1")
    ]
    not_controller = dict(ray_ref, controller=False)
    assert list(to_owner(Event(ADDED, obj("p", "1", owner=not_controller)))) == []
    other_group = dict(ray_ref, apiVersion="other.io/v1")
    assert list(to_owner(Event(ADDED, obj("p", "1", owner=other_group)))) == []
    assert list(own_key(Event(ADDED, obj("p", "1")))) == [ObjectKey("a", "p")]

    assert generation_changed(Event(ADDED, obj("r", "1")))
    assert not generation_changed(Event(MODIFIED, obj("r", "2"), obj("r", "1")))
    assert generation_changed(Event(MODIFIED, obj("r", "2", gen=2), obj("r", "1")))
