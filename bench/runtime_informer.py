"""Benchmark of the controller runtime alone: watch events absorbed per second, and memory per cached pod.

A stand-in API server runs in a separate process on 127.0.0.1 and streams pre-encoded, realistic Ray pod objects
(labels, controller ownerReference, env, resources, volumes, status, managedFields) as a list answer and as one
long watch. The measured path is the operator's real one: KubeClient (urllib3 stream, line split, `kube.loads`) ->
Reflector -> Informer (transform, store, indexes, dispatch) -> owner mapping -> WorkQueue -> a worker thread with
a no-op reconcile. No API server or etcd is involved, so the numbers are the runtime's own cost.

    .venv/bin/python bench/runtime_informer.py [--pods 2000] [--events 40000] [--json]

Memory is measured with tracemalloc (Python allocations that stay referenced by the cache after the list has been
absorbed and the answer's buffers freed), per pod, for four transforms: none (raw JSON dicts), trim without
interning, the default trim (managedFields dropped, keys and short strings interned), and the pod trim `rayop run`
uses (also drops volumes, env, volumeMounts and tolerations, which the operator does not read from observed pods).
Reconciles log one JSON line each at info level, as in a cluster (rendered, then written to /dev/null).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import resource
import socket
import sys
import threading
import time
import tracemalloc
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client as k8s_client  # noqa: E402

from rayop.runtime.handlers import controller_owner_key  # noqa: E402
from rayop.runtime.informer import Informer  # noqa: E402
from rayop.runtime.kube import KubeClient, Resource  # noqa: E402
from rayop.runtime.logging import configure_logging  # noqa: E402
from rayop.runtime.manager import Controller, Result  # noqa: E402
from rayop.runtime.metrics import Metrics  # noqa: E402
from rayop.runtime.store import ObjectKey, make_trimmer, trim_object  # noqa: E402

PODS = Resource("", "v1", "pods", "Pod")
POD_TRIM = make_trimmer(
    ["spec.volumes", "spec.containers.*.volumeMounts", "spec.containers.*.env", "spec.tolerations",
     "spec.initContainers.*.volumeMounts", "spec.initContainers.*.env"]
)


# -- realistic objects -------------------------------------------------------------------------------------------


def ray_pod(i: int, clusters: int, rv: int) -> dict[str, Any]:
    cluster = f"ray-{i % clusters:04d}"
    ns = f"team-{i % 7}"
    kind = "head" if i < clusters else "worker"
    name = f"{cluster}-{kind}-{uuid.UUID(int=i).hex[-5:]}"
    env = [{"name": f"RAY_ENV_{k}", "value": f"value-{k}"} for k in range(6)] + [
        {"name": "RAY_CLUSTER_NAME", "value": cluster},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
    ]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": f"{cluster}-{kind}-",
            "namespace": ns,
            "uid": str(uuid.UUID(int=i + 10**9)),
            "resourceVersion": str(rv),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {
                "ray.k8s.io/cluster": cluster,
                "ray.k8s.io/node-kind": kind,
                "ray.k8s.io/group": kind,
                "app.kubernetes.io/managed-by": "rayop",
            },
            "annotations": {"ray.k8s.io/spec-hash": uuid.UUID(int=i % clusters).hex},
            "ownerReferences": [{
                "apiVersion": "ray.k8s.io/v1alpha1", "kind": "Ray", "name": cluster,
                "uid": str(uuid.UUID(int=i % clusters)), "controller": True, "blockOwnerDeletion": True,
            }],
            "managedFields": [
                {"manager": "rayop", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in (
                     "ray.k8s.io/cluster", "ray.k8s.io/node-kind", "ray.k8s.io/group",
                     "app.kubernetes.io/managed-by")}}, "f:spec": {"f:containers": {'k:{"name":"ray"}': {
                         f"f:{f}": {} for f in ("image", "args", "command", "env", "resources", "ports")}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:05Z",
                 "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": {
                     f"f:{f}": {} for f in ("conditions", "containerStatuses", "hostIP", "phase", "podIP",
                                            "podIPs", "startTime")}}},
            ],
        },
        "spec": {
            "containers": [{
                "name": "ray",
                "image": "rayproject/ray:2.60.0",
                "command": ["/bin/bash", "-lc", "--"],
                "args": [f"ray start --address={cluster}-head:6379 --block --num-cpus=4 --memory=8589934592"],
                "env": env,
                "ports": [{"containerPort": p, "protocol": "TCP"} for p in (6379, 8265, 10001)],
                "resources": {"limits": {"cpu": "4", "memory": "8Gi"}, "requests": {"cpu": "4", "memory": "8Gi"}},
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                                 {"name": "config", "mountPath": "/etc/ray"},
                                 {"name": "kube-api-access-abcde", "mountPath":
                                  "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {"name": "config", "configMap": {"name": f"{cluster}-config", "defaultMode": 420}},
                        {"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt",
                                                                                  "path": "ca.crt"}]}}]}}],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": f"node-{i % 50}",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": t, "status": "True", "lastProbeTime": None,
                            "lastTransitionTime": "2026-01-01T00:00:05Z"}
                           for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                     "PodScheduled")],
            "hostIP": f"10.0.{i % 50}.1",
            "podIP": f"10.244.{(i // 250) % 250}.{i % 250}",
            "podIPs": [{"ip": f"10.244.{(i // 250) % 250}.{i % 250}"}],
            "startTime": "2026-01-01T00:00:01Z",
            "qosClass": "Guaranteed",
            "containerStatuses": [{
                "name": "ray", "ready": True, "restartCount": 0, "started": True,
                "image": "docker.io/rayproject/ray:2.60.0",
                "imageID": "docker.io/rayproject/ray@sha256:" + "ab" * 32,
                "containerID": "containerd://" + uuid.UUID(int=i).hex * 2,
                "state": {"running": {"startedAt": "2026-01-01T00:00:04Z"}},
                "lastState": {},
            }],
        },
    }


# -- the stand-in API server (separate process) ------------------------------------------------------------------


def serve(port_queue: Any, pods: int, events: int, clusters: int) -> None:
    objects = [ray_pod(i, clusters, 100 + i) for i in range(pods)]
    list_body = json.dumps({"kind": "PodList", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(100 + pods)}, "items": objects}).encode()
    lines = []
    rv = 100 + pods
    for n in range(events):
        obj = objects[n % pods]
        rv += 1
        obj["metadata"]["resourceVersion"] = str(rv)
        lines.append(json.dumps({"type": "MODIFIED", "object": obj}).encode() + b"\n")
    watch_body = b"".join(lines)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            if "watch=true" in self.path:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                step = 64 * 1024
                for start in range(0, len(watch_body), step):
                    chunk = watch_body[start:start + step]
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self.close_connection = True
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(list_body)))
                self.end_headers()
                self.wfile.write(list_body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_queue.put((server.server_address[1], len(list_body) / pods, len(watch_body) / max(1, events)))
    server.serve_forever()


def client_for(port: int) -> KubeClient:
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    return KubeClient(configuration, qps=0)


# -- measurements ------------------------------------------------------------------------------------------------


def measure_events(port: int, pods: int, events: int) -> dict[str, float]:
    client = client_for(port)
    informer = Informer(client, PODS, label_selector="app.kubernetes.io/managed-by=rayop", page_size=0,
                        transform=POD_TRIM)
    reconciled = [0]

    def reconcile(key: ObjectKey) -> Result:
        reconciled[0] += 1
        return Result()

    controller = Controller("bench", reconcile, metrics=Metrics(process=False))
    controller.watch(informer, controller_owner_key("Ray", "ray.k8s.io"))
    done = threading.Event()
    informer.add_handler(lambda e: done.set() if informer.events["MODIFIED"] >= events else None)
    stop = threading.Event()
    controller.start(stop)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    informer.start()
    assert informer.wait_for_sync(120)
    t_list = time.perf_counter() - t0
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    assert done.wait(600), "events did not all arrive"
    t_watch = time.perf_counter() - t1
    cpu_watch = time.process_time() - cpu1
    informer.stop()
    stop.set()
    controller.shutdown(10)
    return {
        "list_seconds": t_list,
        "watch_events": float(informer.events["MODIFIED"]),
        "watch_seconds": t_watch,
        "events_per_second": informer.events["MODIFIED"] / t_watch,
        "cpu_seconds_per_1000_events": 1000 * cpu_watch / max(1, informer.events["MODIFIED"]),
        "reconciles": float(reconciled[0]),
        "total_cpu_seconds": time.process_time() - cpu0,
    }


def measure_memory(port: int, pods: int, transform: Any) -> dict[str, float]:
    client = client_for(port)
    informer = Informer(client, PODS, label_selector="app.kubernetes.io/managed-by=rayop", page_size=0,
                        transform=transform)
    informer.reflectors[0].min_watch_timeout = 10**6  # keep the watch (and its memory) out of the picture
    reflector = informer.reflectors[0]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    # Only the list: run the reflector's list step directly so no watch traffic is absorbed.
    reflector._list()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(informer.store) == pods
    return {"bytes_per_pod": (after - before) / pods}


MEMORY_VARIANTS = (
    ("none", None),
    ("trim-no-intern", make_trimmer(intern=False)),
    ("trim", trim_object),
    ("pod-trim", POD_TRIM),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--events", type=int, default=40000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # As in a cluster: one JSON line per reconcile, at info level (written to /dev/null, but rendered).
    configure_logging("json", "info", stream=open(os.devnull, "w"))

    ctx = multiprocessing.get_context("spawn")
    ports: Any = ctx.Queue()
    server = ctx.Process(target=serve, args=(ports, args.pods, args.events, args.clusters), daemon=True)
    server.start()
    port, list_bytes_per_pod, event_bytes = ports.get(timeout=300)
    try:
        results: dict[str, Any] = {
            "pods": args.pods,
            "json_bytes_per_pod": list_bytes_per_pod,
            "json_bytes_per_event": event_bytes,
        }
        for name, transform in MEMORY_VARIANTS:
            results[f"memory_{name}"] = measure_memory(port, args.pods, transform)
        results["events"] = measure_events(port, args.pods, args.events)
        results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results["python"] = sys.version.split()[0]
        results["cpus"] = os.cpu_count()
    finally:
        server.kill()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    ev = results["events"]
    print(f"pods cached: {args.pods}  (JSON {list_bytes_per_pod / 1024:.1f} KiB per pod)")
    for name, _ in MEMORY_VARIANTS:
        print(f"memory per cached pod, transform={name:14s}: "
              f"{results[f'memory_{name}']['bytes_per_pod'] / 1024:.2f} KiB")
    print(f"list of {args.pods} pods absorbed in {ev['list_seconds']:.2f} s")
    print(f"watch: {ev['watch_events']:.0f} MODIFIED events in {ev['watch_seconds']:.2f} s = "
          f"{ev['events_per_second']:.0f} events/s ({ev['cpu_seconds_per_1000_events'] * 1000:.0f} us CPU per "
          f"event), {ev['reconciles']:.0f} reconciles of {args.clusters} owners")
    print(f"peak RSS of the benchmark process: {results['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
