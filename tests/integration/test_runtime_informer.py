"""The informer converges to the API server's state after a dropped watch, a 410 Gone forced by etcd compaction,
and an API server restart, including objects deleted while it was not watching.

PodTemplates are used because the local API server keeps no watch cache for them: a watch from a compacted
resourceVersion gets a real 410 from etcd. The restart test also watches ConfigMaps (served from the watch cache).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from rayop.runtime.informer import DELETED, Event, Informer
from rayop.runtime.kube import KubeClient, Resource, abort_response
from rayop.runtime.store import ObjectKey
from tests.support.cluster import LocalCluster, wait_until

PODTEMPLATES = Resource("", "v1", "podtemplates", "PodTemplate")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")


def make(kube: KubeClient, resource: Resource, ns: str, name: str, label: str) -> None:
    body: dict[str, Any] = {"metadata": {"name": name, "labels": {"rayop.dev/it": label}}}
    if resource is PODTEMPLATES:
        body["template"] = {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    else:
        body["data"] = {"k": name}
    kube.create(resource.collection(ns), body)


def touch(kube: KubeClient, resource: Resource, ns: str, name: str) -> None:
    kube.patch(resource.object(ns, name), {"metadata": {"annotations": {"touched": uuid.uuid4().hex}}})


def server_state(kube: KubeClient, resource: Resource, ns: str, label: str) -> dict[str, str]:
    items = kube.get(resource.collection(ns), labelSelector=f"rayop.dev/it={label}")["items"]
    return {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in items}


def cache_state(informer: Informer) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in informer.store.list()}


def converged(kube: KubeClient, informer: Informer, ns: str, label: str) -> bool:
    return cache_state(informer) == server_state(kube, informer.resource, ns, label)


class Watcher:
    """An informer on one label in one namespace, recording what its handler saw."""

    def __init__(self, kube: KubeClient, resource: Resource, ns: str, **kwargs: Any) -> None:
        self.label = uuid.uuid4().hex[:8]
        self.kube = kube
        self.ns = ns
        self.informer = Informer(kube, resource, namespaces=[ns], label_selector=f"rayop.dev/it={self.label}",
                                 mutation_detector=True, **kwargs)
        self.events: list[Event] = []
        self.informer.add_handler(self.events.append)

    def deleted(self) -> dict[str, bool]:
        """name -> whether the deletion came as a tombstone (final state unknown)."""
        return {e.key.name: e.final_state_unknown for e in self.events if e.type == DELETED}

    def wait_converged(self, timeout: float = 60) -> None:
        wait_until(lambda: converged(self.kube, self.informer, self.ns, self.label), timeout,
                   message=f"{self.informer.name} to converge")
        self.informer.store.check_mutations()


@pytest.fixture
def stop_informers() -> Any:
    informers: list[Informer] = []
    yield informers
    for informer in informers:
        informer.stop()
    for informer in informers:
        informer.join(10)


def test_list_then_watch_sees_every_change(kube: KubeClient, namespace: str, stop_informers: list[Informer]) -> None:
    w = Watcher(kube, PODTEMPLATES, namespace)
    for i in range(3):
        make(kube, PODTEMPLATES, namespace, f"pre-{i}", w.label)
    make(kube, PODTEMPLATES, namespace, "other-label", "nope")
    stop_informers.append(w.informer)
    w.informer.start()
    assert w.informer.wait_for_sync(60)
    assert sorted(cache_state(w.informer)) == ["pre-0", "pre-1", "pre-2"], "the label selection is honoured"
    make(kube, PODTEMPLATES, namespace, "new", w.label)
    touch(kube, PODTEMPLATES, namespace, "pre-0")
    kube.delete(PODTEMPLATES.object(namespace, "pre-1"))
    w.wait_converged()
    assert w.deleted() == {"pre-1": False}
    cached = w.informer.store.get(ObjectKey(namespace, "new"))
    assert cached is not None
    assert "managedFields" not in cached["metadata"], "cached objects are trimmed"
    assert cached["kind"] == "PodTemplate" and cached["apiVersion"] == "v1"
    listed = w.informer.store.get(ObjectKey(namespace, "pre-2"))
    assert listed is not None and listed["kind"] == "PodTemplate", "listed items get their kind too"


def test_dropped_watch_resumes_without_relisting(
    kube: KubeClient, namespace: str, stop_informers: list[Informer]
) -> None:
    w = Watcher(kube, PODTEMPLATES, namespace)
    make(kube, PODTEMPLATES, namespace, "a", w.label)
    make(kube, PODTEMPLATES, namespace, "b", w.label)
    stop_informers.append(w.informer)
    w.informer.start()
    assert w.informer.wait_for_sync(60)
    reflector = w.informer.reflectors[0]

    # (1) The live connection drops under the reflector (as a network cut looks from the client).
    wait_until(lambda: reflector._response is not None, 30, 0.05, message="watch to open")
    abort_response(reflector._response)
    make(kube, PODTEMPLATES, namespace, "c", w.label)
    kube.delete(PODTEMPLATES.object(namespace, "a"))
    w.wait_converged()

    # (2) A longer gap: the informer is stopped, changes happen, it resumes from its resourceVersion.
    w.informer.stop()
    w.informer.join(30)
    kube.delete(PODTEMPLATES.object(namespace, "b"))
    make(kube, PODTEMPLATES, namespace, "d", w.label)
    touch(kube, PODTEMPLATES, namespace, "c")
    w.informer.start()
    w.wait_converged()
    stats = w.informer.stats()
    assert stats["lists"] == 1, "a dropped watch resumes from the last resourceVersion: no relist"
    assert stats["watches"] >= 3
    assert w.deleted() == {"a": False, "b": False}, "deletions in the gap arrive as watch events"


def test_gone_after_compaction_relists_and_tombstones_missed_deletions(
    cluster: LocalCluster, kube: KubeClient, namespace: str, stop_informers: list[Informer]
) -> None:
    w = Watcher(kube, PODTEMPLATES, namespace)
    for name in ("keep", "change", "delete-1", "delete-2"):
        make(kube, PODTEMPLATES, namespace, name, w.label)
    stop_informers.append(w.informer)
    w.informer.start()
    assert w.informer.wait_for_sync(60)
    w.informer.stop()
    w.informer.join(30)
    old_rv = w.informer.reflectors[0].resource_version

    kube.delete(PODTEMPLATES.object(namespace, "delete-1"))
    kube.delete(PODTEMPLATES.object(namespace, "delete-2"))
    touch(kube, PODTEMPLATES, namespace, "change")
    make(kube, PODTEMPLATES, namespace, "added", w.label)
    # Unrelated writes after ours, then compaction: the informer's resourceVersion is now history.
    make(kube, CONFIGMAPS, namespace, "bump", "x")
    revision = cluster.compact_etcd()
    assert revision > int(old_rv)

    w.informer.start()
    w.wait_converged()
    stats = w.informer.stats()
    assert stats["relists_gone"] >= 1, "the watch from a compacted resourceVersion must get 410 Gone"
    assert stats["lists"] >= 2
    assert w.deleted() == {"delete-1": True, "delete-2": True}, "missed deletions come as tombstones"
    tomb = next(e for e in w.events if e.type == DELETED)
    assert tomb.obj["metadata"]["name"].startswith("delete-"), "a tombstone carries the last known object"


def test_api_server_restart_converges_including_deletions_in_the_gap(
    cluster: LocalCluster, kube: KubeClient, namespace: str, stop_informers: list[Informer]
) -> None:
    # The reflectors' backoff waits are held at a gate, so the test can change things while nobody watches.
    gate = threading.Event()
    waiting = threading.Event()

    def held_sleep(stop: threading.Event, seconds: float) -> bool:
        waiting.set()
        gate.wait(120)
        return stop.wait(0.5)

    watchers = [Watcher(kube, r, namespace, sleep=held_sleep) for r in (PODTEMPLATES, CONFIGMAPS)]
    for w in watchers:
        for name in ("keep", "gone-1", "gone-2"):
            make(kube, w.informer.resource, namespace, name, w.label)
        stop_informers.append(w.informer)
        w.informer.start()
        assert w.informer.wait_for_sync(60)

    cluster.script("restart", "kube-apiserver")
    try:
        assert waiting.wait(60), "the reflectors should have noticed the API server going away"
        wait_until(lambda: _api_up(kube), 120, 0.5, message="API server back")
        for w in watchers:
            r = w.informer.resource
            kube.delete(r.object(namespace, "gone-1"))
            kube.delete(r.object(namespace, "gone-2"))
            touch(kube, r, namespace, "keep")
            make(kube, r, namespace, "born-in-gap", w.label)
    finally:
        gate.set()
    for w in watchers:
        w.wait_converged(120)
        assert set(w.deleted()) == {"gone-1", "gone-2"}, w.informer.name
        assert w.informer.stats()["errors"] >= 1


def _api_up(kube: KubeClient) -> bool:
    try:
        kube.get("/version")
        return True
    except Exception:
        return False
