#!/usr/bin/env python3
"""The node agent: plays kubelet for one or more Nodes of the local control plane.

Guarantees:
- Each Node is registered Ready with capacity, renews its Lease in `kube-node-lease` every 10 s and refreshes its
  status every 60 s (or at once when its readiness is changed through the fault hooks).
- Every pod bound to one of its nodes is driven like a kubelet would: Pending -> Running with container statuses,
  the Ready condition and a pod IP; pods whose containers exit run to Succeeded or Failed as their restartPolicy
  says; crash-looping containers back off. The container runtime is pluggable (`--mode sim`: containers as
  timelines, see sim.py; `--mode process` runs them as local processes in their own network and mount
  namespaces, see process.py, and serves `kubectl logs` on the Node's kubelet port, see kubelet.py).
- A pod status is written only when it differs from the last one written, and each pod is re-synced exactly when
  its timeline next changes (delayed work-queue adds), never by polling.
- A pod with a deletionTimestamp has its containers stopped and is then deleted with grace period 0 and a UID
  precondition, so a new pod of the same name is never touched.
- A pod that does not fit its Node (the sum of the requests of the pods it admitted, against the Node's capacity)
  is turned away as the kubelet does: Failed with reason `OutOf<resource>`, no container (admission.py). Only pods
  created with `spec.nodeName` set can meet this; the scheduler places no pod where it does not fit.
- Pods of a node made NotReady through the fault hooks are frozen (no status updates, no finalization), as on a
  real node that lost its kubelet.

Fault hooks (HTTP on 127.0.0.1:--control-port, JSON bodies):
  POST /pods/crash {namespace, name, container?, exitCode?}   a container exits now (default code 137)
  POST /pods/fail  {namespace, name, reason?, message?}       the pod fails now
  POST /nodes/ready {node, ready}                             set a node's Ready condition
  GET  /healthz, GET /pods                                    liveness; what the agent tracks
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import ipaddress
import itertools
import math
import json
import logging
import platform
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from admission import Admission  # noqa: E402
from sim import ContainerView, PodView, SimRuntime  # noqa: E402

from rayop.runtime.kube import ApiError, KubeClient  # noqa: E402
from rayop.runtime.workqueue import WorkQueue  # noqa: E402

log = logging.getLogger("node-agent")

KUBELET_VERSION = "v1.36.3"
POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
LEASE_SECONDS = 40
RENEW_INTERVAL = 10.0
STATUS_INTERVAL = 60.0


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_prefix(cidr: ipaddress.IPv4Network, nodes: int) -> int:
    """The prefix length of each Node's pod subnet: the pod CIDR split into enough parts for every Node plus the
    first part, which holds the process-mode bridge address."""
    return min(cidr.prefixlen + math.ceil(math.log2(nodes + 1)), 30)


class Node:
    """One Node the agent plays kubelet for, with its own pod subnet: addresses are handed out lowest first,
    released ones are reused, and an address in use is never handed out twice."""

    def __init__(self, name: str, index: int, capacity: dict[str, str],
                 cidr: ipaddress.IPv4Network = POD_CIDR, prefix: int = 24):
        self.name = name
        self.index = index
        self.ready = True
        self.subnet = next(itertools.islice(cidr.subnets(new_prefix=prefix), index + 1, None))
        first = int(self.subnet.network_address) + 2  # .1 is the node's gateway
        self._last = int(self.subnet.broadcast_address) - 1
        self._next = first
        self._taken: set[int] = set()
        self._released: list[int] = []
        # A Node never advertises room for more pods than it has addresses.
        self.capacity = dict(capacity, pods=str(min(int(capacity["pods"]), self._last - first + 1)))
        self._lock = threading.Lock()

    def allocate_ip(self) -> str:
        with self._lock:
            while self._released:
                addr = heapq.heappop(self._released)
                if addr not in self._taken:
                    self._taken.add(addr)
                    return str(ipaddress.IPv4Address(addr))
            while self._next <= self._last:
                addr, self._next = self._next, self._next + 1
                if addr not in self._taken:
                    self._taken.add(addr)
                    return str(ipaddress.IPv4Address(addr))
        raise RuntimeError(f"node {self.name}: no pod address left in {self.subnet}")

    def reserve_ip(self, ip: str) -> bool:
        """Mark an address a pod already has (after an agent restart) as in use; False if it is not free."""
        addr = ipaddress.ip_address(ip)
        with self._lock:
            if addr not in self.subnet or int(addr) in self._taken:
                return False
            self._taken.add(int(addr))
            return True

    def release_ip(self, ip: str) -> None:
        addr = ipaddress.ip_address(ip)
        with self._lock:
            if int(addr) in self._taken:
                self._taken.discard(int(addr))
                heapq.heappush(self._released, int(addr))


class Agent:
    def __init__(self, client: KubeClient, nodes: list[Node], runtime: Any, workers: int = 4,
                 kubelet_port: int = 10250):
        self.client = client
        self.nodes = {n.name: n for n in nodes}
        self.runtime = runtime
        self.queue: WorkQueue[tuple[str, str]] = WorkQueue(name="pods")
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.ips: dict[str, str] = {}  # pod uid -> ip
        self.written: dict[str, Any] = {}  # pod uid -> last status written
        # What each Node admitted: a pod created with spec.nodeName set is not checked by the scheduler.
        self.admission = Admission({n.name: n.capacity for n in nodes})
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.workers = workers
        # UIDs of pods whose termination (preStop hooks, then stop) runs in a thread of its own.
        self.terminating: set[str] = set()
        self.threads: list[threading.Thread] = []
        self.kubelet_port = kubelet_port
        # Process mode: a pod keeps the IP in its status across agent restarts (its namespace is rebuilt with it).
        self.keep_ips = getattr(runtime, "scheme", "sim") == "process"

    # -- nodes ----------------------------------------------------------------------------------------------------

    def node_status(self, node: Node) -> dict[str, Any]:
        stamp = now_iso()
        ready = {
            "type": "Ready", "status": "True" if node.ready else "False",
            "reason": "KubeletReady" if node.ready else "KubeletNotReady",
            "message": "node agent is posting ready status" if node.ready else "fault hook: node made NotReady",
            "lastHeartbeatTime": stamp,
        }
        conditions = [ready] + [
            {"type": t, "status": "False", "reason": f"KubeletHas{r}", "message": "ok", "lastHeartbeatTime": stamp}
            for t, r in (("MemoryPressure", "SufficientMemory"), ("DiskPressure", "NoDiskPressure"),
                         ("PIDPressure", "SufficientPID"))
        ]
        return {
            "capacity": node.capacity, "allocatable": node.capacity, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": node.name, "systemUUID": node.name, "bootID": node.name,
                "kernelVersion": "sim" if not self.keep_ips else platform.release(),
                "osImage": "rayop node agent",
                "containerRuntimeVersion": f"rayop-{getattr(self.runtime, 'scheme', 'sim')}://1",
                "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register(self, node: Node) -> None:
        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {
                "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "node.rayop.dev/agent": "true"}},
            "spec": {"podCIDR": str(node.subnet), "podCIDRs": [str(node.subnet)]},
        }
        try:
            self.client.create("/api/v1/nodes", body)
        except ApiError as e:
            if not e.already_exists:
                raise
        self.post_node_status(node)

    def post_node_status(self, node: Node) -> None:
        self.client.patch(f"/api/v1/nodes/{node.name}/status", {"status": self.node_status(node)})

    def renew_lease(self, node: Node) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.name}"
        spec = {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
        try:
            self.client.patch(path, {"spec": spec})
        except ApiError as e:
            if not e.not_found:
                raise
            self.client.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {"metadata": {"name": node.name, "namespace": "kube-node-lease",
                              "ownerReferences": []}, "spec": spec},
            )

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(RENEW_INTERVAL):
            for node in self.nodes.values():
                try:
                    if node.ready:
                        self.renew_lease(node)
                    if time.monotonic() - last_status >= STATUS_INTERVAL:
                        self.post_node_status(node)
                except Exception as e:  # noqa: BLE001 - keep beating; the next beat retries
                    log.warning("heartbeat for %s failed: %s", node.name, e)
            if time.monotonic() - last_status >= STATUS_INTERVAL:
                last_status = time.monotonic()

    def set_ready(self, name: str, ready: bool) -> None:
        node = self.nodes[name]
        node.ready = ready
        self.post_node_status(node)
        if ready:
            with self.lock:
                keys = [k for k, p in self.pods.items() if p["spec"].get("nodeName") == name]
            for key in keys:
                self.queue.add(key)

    # -- pods -----------------------------------------------------------------------------------------------------

    def watch_loop(self, node: Node) -> None:
        """List then watch the node's pods; relist on any error (410 Gone included)."""
        selector = f"spec.nodeName={node.name}"
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                listing = self.client.get("/api/v1/pods", fieldSelector=selector)
                seen = set()
                for pod in listing["items"]:
                    key = self.remember(pod)
                    seen.add(key)
                with self.lock:
                    gone = [k for k, p in self.pods.items()
                            if p["spec"].get("nodeName") == node.name and k not in seen]
                for key in gone:
                    self.vanished(key)
                rv = listing["metadata"]["resourceVersion"]
                backoff = 0.5
                while not self.stopping.is_set():
                    for event in self.client.watch("/api/v1/pods", {
                        "fieldSelector": selector, "resourceVersion": rv, "allowWatchBookmarks": "true",
                        "timeoutSeconds": 300,
                    }, timeout=330):
                        obj = event["object"]
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        if event["type"] == "DELETED":
                            self.vanished((obj["metadata"]["namespace"], obj["metadata"]["name"]), obj)
                        else:
                            self.remember(obj)
                        if self.stopping.is_set():
                            return
            except Exception as e:  # noqa: BLE001 - relist after any failure
                if self.stopping.is_set():
                    return
                log.info("pod watch for %s restarting after: %s", node.name, e)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def remember(self, pod: dict[str, Any]) -> tuple[str, str]:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        with self.lock:
            old = self.pods.get(key)
            if old is not None and old["metadata"]["uid"] != pod["metadata"]["uid"]:
                self._forget_uid(old["metadata"]["uid"])
            self.pods[key] = pod
        self.queue.add(key)
        return key

    def vanished(self, key: tuple[str, str], obj: dict[str, Any] | None = None) -> None:
        with self.lock:
            pod = self.pods.get(key)
            if pod is None or (obj is not None and pod["metadata"]["uid"] != obj["metadata"]["uid"]):
                return
            del self.pods[key]
            self._forget_uid(pod["metadata"]["uid"])
        if getattr(self.runtime, "has_pre_stop", None) is not None:
            self.runtime.stop(pod, pre_stop=False)  # the object is gone (force-deleted): no time for hooks
        else:
            self.runtime.stop(pod)

    def _forget_uid(self, uid: str) -> None:
        self.runtime.forget(uid)
        self.admission.release(uid)
        self.written.pop(uid, None)
        ip = self.ips.pop(uid, None)
        if ip:
            for node in self.nodes.values():
                node.release_ip(ip)

    def worker(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                self.sync(key)
                self.queue.forget(key)
            except ApiError as e:
                if e.not_found:
                    self.queue.forget(key)
                else:
                    log.warning("sync %s/%s: %s", *key, e)
                    self.queue.add_rate_limited(key)
            except Exception:  # noqa: BLE001
                log.exception("sync %s/%s failed", *key)
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)

    def sync(self, key: tuple[str, str]) -> None:
        with self.lock:
            pod = self.pods.get(key)
        if pod is None:
            return
        node = self.nodes.get(pod["spec"].get("nodeName", ""))
        if node is None or not node.ready:
            return
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            has_hooks = getattr(self.runtime, "has_pre_stop", None)
            if has_hooks is not None and has_hooks(pod):
                # preStop hooks may take most of the grace period: never hold a sync worker that long.
                with self.lock:
                    if meta["uid"] in self.terminating:
                        return
                    self.terminating.add(meta["uid"])
                threading.Thread(target=self._terminate, args=(key, pod), daemon=True,
                                 name=f"terminate-{key[1]}").start()
                return
            self._terminate(key, pod)
            return
        self._sync_live(key, pod, node)

    def _terminate(self, key: tuple[str, str], pod: dict[str, Any]) -> None:
        """Stop the pod's containers (preStop hooks first, in process mode) and remove the pod object."""
        meta = pod["metadata"]
        try:
            self.runtime.stop(pod)
            try:
                self.client.delete(
                    f"/api/v1/namespaces/{key[0]}/pods/{key[1]}",
                    {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                )
            except ApiError as e:
                if not (e.not_found or e.conflict):
                    raise
        finally:
            with self.lock:
                self.terminating.discard(meta["uid"])

    def _sync_live(self, key: tuple[str, str], pod: dict[str, Any], node: Node) -> None:
        meta = pod["metadata"]
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            self.admission.release(meta["uid"])
            return
        if not self.admit(key, pod, node):
            return
        self.ip_for(pod, node)
        now = time.time()
        view = self.runtime.observe(pod, now)
        status = self.pod_status(pod, node, view)
        if self.written.get(meta["uid"]) != status:
            self.client.patch(f"/api/v1/namespaces/{key[0]}/pods/{key[1]}/status", {"status": status})
            self.written[meta["uid"]] = status
        if view.phase in ("Succeeded", "Failed"):
            self.admission.release(meta["uid"])
        if view.next_change is not None and view.phase not in ("Succeeded", "Failed"):
            self.queue.add_after(key, max(0.0, view.next_change - time.time()) + 0.01)

    def admit(self, key: tuple[str, str], pod: dict[str, Any], node: Node) -> bool:
        """The kubelet's admission (see admission.py): False when the pod was turned away (and marked so)."""
        uid = pod["metadata"]["uid"]
        if self.admission.admitted(uid):
            return True
        status = pod.get("status") or {}
        if status.get("startTime") or status.get("containerStatuses"):
            self.admission.restore(node.name, pod)  # it ran before this agent started
            return True
        refusal = self.admission.admit(node.name, pod)
        if refusal is None:
            return True
        reason, message = refusal
        rejected = {"phase": "Failed", "reason": reason, "message": message}
        log.info("pod %s/%s rejected on %s: %s", key[0], key[1], node.name, message)
        self.client.patch(f"/api/v1/namespaces/{key[0]}/pods/{key[1]}/status", {"status": rejected})
        self.written[uid] = rejected
        return False

    def ip_for(self, pod: dict[str, Any], node: Node) -> str:
        uid = pod["metadata"]["uid"]
        if uid not in self.ips:
            old = (pod.get("status") or {}).get("podIP")
            if pod["spec"].get("hostNetwork", False):
                self.ips[uid] = "127.0.0.1"
            elif self.keep_ips and old and node.reserve_ip(old):
                self.ips[uid] = old
            else:
                self.ips[uid] = node.allocate_ip()
        return self.ips[uid]

    def pod_status(self, pod: dict[str, Any], node: Node, view: PodView) -> dict[str, Any]:
        uid = pod["metadata"]["uid"]
        scheme = getattr(self.runtime, "scheme", "sim")
        ip = self.ip_for(pod, node)
        start = pod.get("status", {}).get("startTime") or now_iso()
        containers = [_status_of(c, uid, scheme) for c in view.containers]
        inits = [_status_of(c, uid, scheme) for c in view.init_containers]
        all_ready = bool(containers) and all(c["ready"] for c in containers) and view.phase == "Running"
        initialized = all("terminated" in c["state"] for c in inits)
        old = {c["type"]: c for c in pod.get("status", {}).get("conditions") or []}

        def cond(kind: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
            status = "True" if ok else "False"
            prev = old.get(kind)
            out: dict[str, Any] = {"type": kind, "status": status,
                                   "lastTransitionTime": prev["lastTransitionTime"]
                                   if prev and prev.get("status") == status and prev.get("lastTransitionTime")
                                   else now_iso(), "lastProbeTime": None}
            if not ok and reason:
                out["reason"] = reason
            return out

        conditions = [
            cond("PodReadyToStartContainers", view.phase != "Pending" or not containers),
            cond("Initialized", initialized, "ContainersNotInitialized"),
            cond("Ready", all_ready, "ContainersNotReady" if view.phase == "Running" else "PodCompleted"),
            cond("ContainersReady", all_ready, "ContainersNotReady"),
            old.get("PodScheduled") or cond("PodScheduled", True),
        ]
        status: dict[str, Any] = {
            "phase": view.phase, "conditions": conditions, "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}], "podIP": ip, "podIPs": [{"ip": ip}], "startTime": start,
            "containerStatuses": containers,
        }
        if inits:
            status["initContainerStatuses"] = inits
        if view.reason:
            status["reason"] = view.reason
            status["message"] = view.message
        return status

    # -- faults ---------------------------------------------------------------------------------------------------

    def pod_for_fault(self, body: dict[str, Any]) -> tuple[tuple[str, str], dict[str, Any]]:
        key = (body["namespace"], body["name"])
        with self.lock:
            pod = self.pods.get(key)
        if pod is None:
            raise KeyError(f"pod {key[0]}/{key[1]} is not on this agent's nodes")
        return key, pod

    def crash(self, body: dict[str, Any]) -> dict[str, Any]:
        key, pod = self.pod_for_fault(body)
        self.runtime.crash(pod, body.get("container"), int(body.get("exitCode", 137)), time.time())
        self.queue.add(key)
        return {"crashed": f"{key[0]}/{key[1]}"}

    def fail(self, body: dict[str, Any]) -> dict[str, Any]:
        key, pod = self.pod_for_fault(body)
        self.runtime.fail(pod, body.get("reason", "Evicted"), body.get("message", "fault hook: pod failed"),
                          time.time())
        self.queue.add(key)
        return {"failed": f"{key[0]}/{key[1]}"}

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes.values():
            self.register(node)
            self.renew_lease(node)
        self.threads.append(threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True))
        for node in self.nodes.values():
            self.threads.append(threading.Thread(target=self.watch_loop, args=(node,), name=f"watch-{node.name}",
                                                 daemon=True))
        for i in range(self.workers):
            self.threads.append(threading.Thread(target=self.worker, name=f"worker-{i}", daemon=True))
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stopping.set()
        self.queue.shutdown(drain=True, timeout=5)


def _status_of(view: ContainerView, uid: str, scheme: str = "sim") -> dict[str, Any]:
    return {
        "name": view.name, "image": view.image, "imageID": f"{scheme}://{view.image}",
        "containerID": f"{scheme}://{uid}/{view.name}/{view.restart_count}", "ready": view.ready,
        "started": view.started, "restartCount": view.restart_count, "state": view.state,
        "lastState": view.last_state,
    }


def control_server(agent: Agent, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("control: " + fmt, *args)

        def reply(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                self.reply(200, {"ok": True})
            elif self.path == "/pods":
                with agent.lock:
                    self.reply(200, sorted(f"{k[0]}/{k[1]}" for k in agent.pods))
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/pods/crash":
                    self.reply(200, agent.crash(body))
                elif self.path == "/pods/fail":
                    self.reply(200, agent.fail(body))
                elif self.path == "/nodes/ready":
                    agent.set_ready(body["node"], bool(body["ready"]))
                    self.reply(200, {"node": body["node"], "ready": bool(body["ready"])})
                else:
                    self.reply(404, {"error": "not found"})
            except KeyError as e:
                self.reply(404, {"error": str(e)})
            except (ValueError, TypeError) as e:
                self.reply(400, {"error": str(e)})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    return server


def process_agent(args: argparse.Namespace, client: KubeClient, nodes: list[Node], cidr: ipaddress.IPv4Network,
                  capacity: dict[str, str]) -> tuple[Agent, list[Any]]:
    """Process mode: the bridge, the runtime, the API server forwarder and the kubelet endpoint."""
    from urllib.parse import urlsplit

    from kubelet import kubelet_server
    from process import ApiForwarder, ProcessRuntime, ensure_bridge

    if not args.state_dir or not args.pki_dir or not args.kubelet_port:
        raise SystemExit("node-agent: --mode process needs --state-dir, --pki-dir and --kubelet-port")
    gateway = str(next(cidr.hosts()))
    api = urlsplit(client.host)
    api_port = api.port or 443
    ensure_bridge(args.bridge, gateway, cidr.prefixlen)
    runtime = ProcessRuntime(client, Path(args.state_dir), args.bridge, gateway, cidr.prefixlen, args.netns_prefix,
                             api_port, allocatable=capacity)
    agent = Agent(client, nodes, runtime, workers=args.workers, kubelet_port=args.kubelet_port)
    runtime.notify = lambda ns, name: agent.queue.add((ns, name))

    def ip_of(pod: dict[str, Any]) -> str:
        node = agent.nodes[pod["spec"]["nodeName"]]
        return agent.ip_for(pod, node)

    runtime.ip_of = ip_of
    runtime.start()
    forwarder = ApiForwarder((gateway, api_port), ("127.0.0.1", api_port))
    kubelet = kubelet_server(runtime, args.kubelet_port, Path(args.pki_dir))
    return agent, [forwarder, _Closer(kubelet)]


class _Closer:
    def __init__(self, server: ThreadingHTTPServer):
        self.server = server

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description="rayop's node agent (plays kubelet)")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--node-prefix", default="rayop-node-")
    parser.add_argument("--mode", choices=["sim", "process"], default="sim")
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--cpu", default="4000")
    parser.add_argument("--memory", default="32Ti")
    parser.add_argument("--pods", default="5000")
    parser.add_argument("--gpus", default="8")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pod-cidr", default=str(POD_CIDR), help="process mode: the bridge's subnet")
    parser.add_argument("--bridge", default="rayop0", help="process mode: the bridge pods are plugged into")
    parser.add_argument("--netns-prefix", default="rayop-", help="process mode: pod network namespace prefix")
    parser.add_argument("--kubelet-port", type=int, default=0, help="process mode: the kubelet HTTPS port")
    parser.add_argument("--pki-dir", default=None, help="process mode: the cluster PKI (ca.crt, kubelet.crt)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    capacity = {"cpu": args.cpu, "memory": args.memory, "pods": args.pods, "ephemeral-storage": "1Ti",
                "nvidia.com/gpu": args.gpus}
    cidr = ipaddress.IPv4Network(args.pod_cidr)
    prefix = node_prefix(cidr, args.nodes)
    nodes = [Node(f"{args.node_prefix}{i + 1}", i, capacity, cidr, prefix) for i in range(args.nodes)]
    client = KubeClient.load(args.kubeconfig, qps=0, user_agent="rayop-node-agent")
    extra: list[Any] = []
    if args.mode == "process":
        agent, extra = process_agent(args, client, nodes, cidr, capacity)
    else:
        agent = Agent(client, nodes, SimRuntime(), workers=args.workers)
    server = control_server(agent, args.control_port)
    agent.start()
    log.info("node agent up: %s (%s mode), control on 127.0.0.1:%d", ", ".join(agent.nodes), args.mode,
             args.control_port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    agent.stop()
    server.shutdown()
    for thing in extra:
        thing.close()
    if args.mode == "process":
        agent.runtime.shutdown()
    log.info("node agent stopped")


if __name__ == "__main__":
    main()
