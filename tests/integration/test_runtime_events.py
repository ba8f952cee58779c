"""A reconcile that raises TerminalError leaves a Warning Event on the object and is not retried; repeated Events
are aggregated into one object with a count."""

from __future__ import annotations

import uuid

from rayop.runtime.kube import KubeClient, Resource
from rayop.runtime.manager import Manager, TerminalError
from rayop.runtime.store import ObjectKey
from tests.support.cluster import wait_until

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")


def events(kube: KubeClient, namespace: str, reason: str) -> list[dict]:  # type: ignore[type-arg]
    return [e for e in kube.get(f"/api/v1/namespaces/{namespace}/events")["items"] if e["reason"] == reason]


def test_terminal_error_records_an_event_and_does_not_retry(kube: KubeClient, namespace: str) -> None:
    label = uuid.uuid4().hex[:8]
    calls: list[ObjectKey] = []
    manager = Manager(kube, namespaces=[namespace], metrics_address=None, shutdown_timeout=10)
    informer = manager.informer(CONFIGMAPS, label_selector=f"rayop.dev/it={label}")

    def reconcile(key: ObjectKey) -> None:
        calls.append(key)
        raise TerminalError("spec cannot work", "InvalidSpec")

    manager.controller("events-test", reconcile).watch_primary(informer)
    manager.start()
    try:
        cm = kube.create(f"/api/v1/namespaces/{namespace}/configmaps",
                         {"metadata": {"name": "bad", "labels": {"rayop.dev/it": label}}})
        found = wait_until(lambda: events(kube, namespace, "InvalidSpec"), 60, 0.5, message="the Warning Event")
        event = found[0]
        assert event["type"] == "Warning" and event["message"] == "spec cannot work"
        assert event["involvedObject"]["uid"] == cm["metadata"]["uid"]
        assert event["involvedObject"]["kind"] == "ConfigMap"
        assert calls == [ObjectKey(namespace, "bad")], "a terminal error is not retried"

        manager.recorder.record(informer.store.get(ObjectKey(namespace, "bad")) or {}, "Warning", "InvalidSpec",
                                "spec cannot work")
        wait_until(lambda: [e for e in events(kube, namespace, "InvalidSpec") if e["count"] == 2], 30, 0.5,
                   message="the repeat to bump the count")
        assert len(events(kube, namespace, "InvalidSpec")) == 1
    finally:
        manager.stop()
        manager.wait(30)
