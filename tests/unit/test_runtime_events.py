"""The Event recorder queues and sends in the background; a full queue drops and counts."""

from __future__ import annotations

import threading
from typing import Any

from rayop.runtime.events import EventRecorder

RAY = {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
       "metadata": {"namespace": "ns", "name": "r", "uid": "u", "resourceVersion": "7"}}


class Recording:
    """Stands in for the client's two write calls; `gate` holds the sender to fill the queue."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()

    def create(self, path: str, body: dict[str, Any], metadata_only: bool = False) -> dict[str, Any]:
        self.gate.wait(10)
        self.created.append(body)
        return body

    def patch(self, path: str, body: dict[str, Any], metadata_only: bool = False) -> dict[str, Any]:
        return body


def test_record_queues_and_flush_sends_in_order() -> None:
    client = Recording()
    recorder = EventRecorder(client)  # type: ignore[arg-type]
    for i in range(5):
        recorder.record(RAY, "Normal", "CreatedPod", f"pod {i}")
    assert recorder.flush(10)
    assert [e["message"] for e in client.created] == [f"pod {i}" for i in range(5)]
    assert client.created[0]["involvedObject"] == {"apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray",
                                                   "namespace": "ns", "name": "r", "uid": "u",
                                                   "resourceVersion": "7"}


def test_full_queue_drops_and_counts() -> None:
    client = Recording()
    client.gate.clear()
    recorder = EventRecorder(client, queue_size=2)  # type: ignore[arg-type]
    for i in range(6):
        recorder.record(RAY, "Normal", "CreatedPod", f"pod {i}")
    assert recorder.dropped >= 3  # one may be in the sender's hands, two queued
    assert not recorder.flush(0.1)
    client.gate.set()
    assert recorder.flush(10)
    assert len(client.created) == 6 - recorder.dropped
