"""The process runtime: each pod's containers run as local processes in the pod's own namespaces.

Guarantees:
- Same interface as `SimRuntime` (`record/forget/crash/fail/stop/observe`); `observe(pod, now)` both reports the
  containers and acts: it sets the pod up on first sight, starts containers whose turn has come (init containers
  one by one first) and restarts exited ones per restartPolicy with crash-loop back-off (first restart at once, then
  10 s doubling up to 300 s; `sim.rayop.dev/restart-backoff-seconds` changes the base). Process exits and probe
  changes call `notify(namespace, name)` so the agent re-syncs the pod at once; back-off ends come back as
  `next_change`.
- A pod gets a network namespace `<prefix><uid[:8]>` with a veth into the bridge, its IP (from the agent's
  allocation) on the bridge subnet, loopback up and a default route via the bridge. hostNetwork pods keep the
  host's network.
- Each container runs through container_init.py in its own mount and UTS namespace with the pod's volumes, a
  private /tmp, the pod's /etc/hosts (kept current from EndpointSlices) and a name-server-less resolv.conf; the
  image is not pulled: argv runs with the repository's virtualenv first on PATH, as root, in its own session.
- stdout and stderr go, line by line with a timestamp, to `<pod dir>/logs/<container>/<restart>.log`; the
  previous run's file is kept for `previous`.
- Probes: exec probes run inside the container's namespaces, httpGet/tcpSocket connect from the host to the pod IP;
  readiness decides `ready` (else ready while running), liveness and startup failures kill the container.
- Teardown (pod deleted, replaced or the agent stopping) sends SIGTERM to every container's process group, SIGKILL
  after the grace period (capped at 10 s) to whatever still runs in the pod's network namespace, unmounts the pod's
  tmpfs volumes, deletes the namespace and veth and, unless the agent is only stopping, the pod folder.
- After an agent restart, namespaces left behind are emptied and removed at start; pods still bound are set up
  again with their recorded IP and restart counts, and their containers restart (counted as restarts).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from podspec import (ConfigError, Endpoints, Mount, container_mounts, decode_secret, endpoints_of,
                     pod_hostname, render_hosts, render_resolv, resolve_env, volume_files, volume_kind,
                     volume_source_dir, command_line)
from hostcleanup import kill_netns_processes, remove_created, remove_netns
from sim import ContainerView, PodView, iso, number

log = logging.getLogger("node-agent.process")

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
INIT = Path(__file__).resolve().parent / "container_init.py"
MAX_BACKOFF = 300.0
GRACE_CAP = 10.0
# preStop hooks may use this much of a pod's grace period (a Ray worker drains its node in them).
PRE_STOP_CAP = 600.0
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_PROFILE = Path("/etc/profile")


def container_profile(host_profile: str) -> str:
    """The /etc/profile a container sees: the host's, except that the container's PATH survives a login shell.

    Debian's /etc/profile resets PATH; an image's (rayproject/ray's, Ubuntu's) does not, so `bash -lc 'ray start'`
    (the operator's Ray command) finds the image's ray there. Here the image's PATH is the virtualenv's."""
    return ("# /etc/profile of a container (rayop node agent, process mode): the host's, keeping the container's PATH\n"
            "__rayop_path=$PATH\n" + host_profile.rstrip("\n") + "\n"
            'PATH="$__rayop_path"; export PATH; unset __rayop_path\n')


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out


def kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def unmount_under(prefix: Path) -> None:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == str(prefix) or point.startswith(str(prefix) + "/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        run("umount", "-l", point, check=False)


class ApiLookup:
    """ConfigMaps, Secrets and tokens from the API server."""

    def __init__(self, client: Any):
        self.client = client

    def configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            cm = self.client.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except Exception as e:  # noqa: BLE001
            if getattr(e, "not_found", False):
                return None
            raise
        out = dict(cm.get("data") or {})
        for k, v in (cm.get("binaryData") or {}).items():
            out[k] = decode_secret({k: v})[k].decode(errors="replace")
        return out

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            s = self.client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except Exception as e:  # noqa: BLE001
            if getattr(e, "not_found", False):
                return None
            raise
        return decode_secret(s.get("data"))

    def token(self, pod: dict[str, Any], audience: str | None, expiration: int) -> str:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {"expirationSeconds": max(600, expiration),
                                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                                                   "uid": meta["uid"]}}
        if audience:
            spec["audiences"] = [audience]
        out = self.client.create(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
                                 {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return str(out["status"]["token"])


# What the kubelet keeps of a failed container's log under terminationMessagePolicy FallbackToLogsOnError.
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def termination_message(spec: dict[str, Any], exit_code: int, logfile: Path | None) -> str:
    """A failed container's termination message under `FallbackToLogsOnError`: the tail of its log (at most 80
    lines and 2048 bytes, the agent's timestamps removed). The `File` policy is not honoured: no file is mounted at
    terminationMessagePath in process mode."""
    if exit_code == 0 or spec.get("terminationMessagePolicy") != "FallbackToLogsOnError" or logfile is None:
        return ""
    try:
        with open(logfile, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.split(" ", 1)[1] if " " in line else line for line in tail.splitlines()[-FALLBACK_LOG_LINES:]]
    text = "\n".join(lines)
    data = text.encode()
    return data[-FALLBACK_LOG_BYTES:].decode("utf-8", "ignore") if len(data) > FALLBACK_LOG_BYTES else text


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    init: bool
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    runs: int = 0  # how many times it was started by this agent (restarts = runs - 1 + restarts_before)
    restarts_before: int = 0
    last: dict[str, Any] = field(default_factory=dict)  # lastState
    exited: dict[str, Any] | None = None  # terminated state of the latest run, once it ended
    forced_exit: int | None = None
    waiting: tuple[str, str] | None = None
    next_start: float = 0.0
    backoff_exp: int = 0
    ready: bool = False
    started: bool = False  # startup probe passed (or none)
    stop_probes: threading.Event = field(default_factory=threading.Event)
    log_done: threading.Event = field(default_factory=threading.Event)
    env: dict[str, str] = field(default_factory=dict)
    backoff_delay: float = 0.0
    logfile: Path | None = None  # the log of the latest run

    @property
    def restart_count(self) -> int:
        return self.restarts_before + max(0, self.runs - 1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.exited is None


@dataclass
class PodState:
    uid: str
    namespace: str
    name: str
    dir: Path
    netns: str | None
    veth: str
    ip: str = ""
    pod: dict[str, Any] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)
    inits: list[Container] = field(default_factory=list)
    set_up: bool = False
    setup_error: str | None = None
    failed: tuple[float, str, str] | None = None
    torn_down: bool = False
    terminal: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)


class ProcessRuntime:
    scheme = "process"

    def __init__(self, client: Any, state_dir: Path, bridge: str, gateway: str, prefix_len: int,
                 netns_prefix: str, api_port: int, allocatable: dict[str, str] | None = None):
        self.client = client
        self.lookup = ApiLookup(client)
        self.dir = state_dir
        self.pods_dir = state_dir / "pods"
        self.bridge = bridge
        self.gateway = gateway
        self.prefix_len = prefix_len
        self.netns_prefix = netns_prefix
        self.api_port = api_port
        self.allocatable = allocatable or {}
        self._pods: dict[str, PodState] = {}
        self._lock = threading.Lock()
        self.services: Endpoints = {}
        self._slices: dict[tuple[str, str], tuple[tuple[str, str], list[tuple[str, str | None]]]] = {}
        self.notify: Callable[[str, str], None] = lambda ns, name: None
        self.ip_of: Callable[[dict[str, Any]], str] = lambda pod: ""
        self.stopping = threading.Event()
        self.created_paths: list[str] = []

    # -- node-level setup ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        ensure_bridge(self.bridge, self.gateway, self.prefix_len)
        self.sweep()
        threading.Thread(target=self.watch_endpoints, name="endpointslices", daemon=True).start()

    def sweep(self) -> None:
        """Remove the namespaces a previous agent left behind (their processes die with them)."""
        for name in list_netns(self.netns_prefix):
            log.info("removing leftover network namespace %s", name)
            remove_netns(name)
        for pod_dir in self.pods_dir.iterdir() if self.pods_dir.exists() else []:
            unmount_under(pod_dir)

    def shutdown(self) -> None:
        self.stopping.set()
        with self._lock:
            pods = list(self._pods.values())
        threads = [threading.Thread(target=self._teardown, args=(st, False, 3.0)) for st in pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        remove_created(self.dir)

    # -- the SimRuntime interface --------------------------------------------------------------------------------

    def record(self, pod: dict[str, Any], now: float) -> PodState:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            st = self._pods.get(uid)
            if st is None:
                host_net = bool(pod["spec"].get("hostNetwork"))
                short = uid.replace("-", "")[:8]
                st = PodState(uid=uid, namespace=meta["namespace"], name=meta["name"], dir=self.pods_dir / uid,
                              netns=None if host_net else f"{self.netns_prefix}{short}",
                              veth=f"rv{self.netns_prefix[5:-1]}{short}"[:15])
                self._pods[uid] = st
            st.pod = pod
            return st

    def forget(self, uid: str) -> None:
        with self._lock:
            st = self._pods.pop(uid, None)
        if st is not None and not st.torn_down:
            threading.Thread(target=self._teardown, args=(st, True), name=f"teardown-{uid[:8]}",
                             daemon=True).start()
        elif st is not None:
            shutil.rmtree(st.dir, ignore_errors=True)

    def known(self) -> int:
        with self._lock:
            return len(self._pods)

    def crash(self, pod: dict[str, Any], container: str | None, exit_code: int, now: float) -> None:
        st = self.record(pod, now)
        with st.lock:
            for c in list(st.containers.values()) + st.inits:
                if (container is None or c.name == container) and c.running and c.proc is not None:
                    c.forced_exit = exit_code
                    kill_group(c.proc.pid, signal.SIGKILL)

    def fail(self, pod: dict[str, Any], reason: str, message: str, now: float) -> None:
        st = self.record(pod, now)
        with st.lock:
            st.failed = (now, reason, message)
        self._stop_containers(st, 0.0)

    def stop(self, pod: dict[str, Any], pre_stop: bool = True) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            st = self._pods.get(uid)
        if st is None:
            # Not driven by this agent (yet): still leave nothing of it behind.
            st = self.record(pod, time.time())
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        grace = float(grace)
        started = time.monotonic()
        if pre_stop and grace > 0 and not st.torn_down:
            self._pre_stop(st, min(grace, PRE_STOP_CAP))
        remaining = grace - (time.monotonic() - started)
        # As the kubelet: what the preStop hooks left of the grace period, at least 2 s, for SIGTERM.
        self._teardown(st, True, min(max(remaining, 2.0 if grace > 0 else 0.0), GRACE_CAP))

    def _pre_stop(self, st: PodState, budget: float) -> None:
        """Run the running containers' `lifecycle.preStop` exec hooks inside them, at once, for at most `budget`
        seconds in all (httpGet hooks and sleep actions are not supported)."""
        with st.lock:
            hooks = [(c, ((c.spec.get("lifecycle") or {}).get("preStop") or {}))
                     for c in st.containers.values() if c.running and c.proc is not None]
        runs = []
        for c, hook in hooks:
            command = (hook.get("exec") or {}).get("command")
            if not command or c.proc is None:
                continue
            cmd = ["nsenter", "-t", str(c.proc.pid), "-n", "-m", "-u", "--wd", "--", *command]
            logdir = st.dir / "logs" / c.name
            logdir.mkdir(parents=True, exist_ok=True)
            out = open(logdir / "prestop.log", "ab")
            runs.append((c, out, subprocess.Popen(cmd, env=c.env, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT, start_new_session=True)))
            log.info("%s/%s container %s: preStop hook started", st.namespace, st.name, c.name)
        deadline = time.monotonic() + budget
        for c, out, proc in runs:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
                log.info("%s/%s container %s: preStop hook exited %d", st.namespace, st.name, c.name, code)
            except subprocess.TimeoutExpired:
                kill_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
                log.info("%s/%s container %s: preStop hook killed at the grace period", st.namespace, st.name,
                         c.name)
            out.close()

    def has_pre_stop(self, pod: dict[str, Any]) -> bool:
        return any(((c.get("lifecycle") or {}).get("preStop") or {}).get("exec")
                   for c in pod.get("spec", {}).get("containers") or [])

    def observe(self, pod: dict[str, Any], now: float) -> PodView:
        st = self.record(pod, now)
        with st.lock:
            if st.torn_down:
                return self._view(st, now, "Pending", None)
            if st.failed:
                return self._view(st, now, "Failed", None)
            if not st.set_up:
                try:
                    self._set_up(st, pod)
                except ConfigError as e:
                    st.setup_error = str(e)
                    return self._view(st, now, "Pending", now + 5)
                except Exception as e:  # noqa: BLE001
                    log.exception("setting up pod %s/%s", st.namespace, st.name)
                    st.setup_error = str(e)
                    return self._view(st, now, "Pending", now + 5)
            changes: list[float] = []
            # Init containers, one at a time, each to success.
            for c in st.inits:
                if c.exited and c.exited["exitCode"] == 0:
                    continue
                self._drive(st, c, now, changes, init=True)
                break
            else:
                for c in st.containers.values():
                    self._drive(st, c, now, changes, init=False)
            phase = self._phase(st)
            if phase in ("Succeeded", "Failed") and not st.terminal:
                st.terminal = True
                threading.Thread(target=self._teardown, args=(st, False, 0.0), daemon=True).start()
            future = [t for t in changes if t > now]
            return self._view(st, now, phase, min(future) if future else None)

    # -- driving containers --------------------------------------------------------------------------------------

    def _restart_policy(self, st: PodState, c: Container) -> str:
        if c.init and c.spec.get("restartPolicy") == "Always":
            return "Always"
        policy = st.pod["spec"].get("restartPolicy", "Always")
        if c.init and policy == "Always":
            return "OnFailure"
        return policy

    def _drive(self, st: PodState, c: Container, now: float, changes: list[float], init: bool) -> None:
        if c.running:
            return
        if c.exited is not None:
            code = c.exited["exitCode"]
            policy = self._restart_policy(st, c)
            if not (policy == "Always" or (policy == "OnFailure" and code != 0)):
                return  # final
            if now < c.next_start:
                changes.append(c.next_start)
                return
        elif now < c.next_start:
            changes.append(c.next_start)
            return
        try:
            self._start_container(st, c)
        except ConfigError as e:
            c.waiting = ("CreateContainerConfigError", str(e))
            c.next_start = now + 5
            changes.append(c.next_start)

    def _start_container(self, st: PodState, c: Container) -> None:
        pod = st.pod
        cdir = st.dir / "containers" / c.name
        (cdir / "tmp").mkdir(parents=True, exist_ok=True)
        os.chmod(cdir / "tmp", 0o1777)
        base = self.base_env(st)
        env = resolve_env(pod, c.spec, st.ip, self.lookup, base, self.allocatable)
        argv = command_line(c.spec, env)
        mounts = container_mounts(pod, c.spec, st.dir, cdir, REPO)
        if (st.dir / "profile").exists():
            mounts.append(Mount(str(st.dir / "profile"), str(HOST_PROFILE), True))
        for m in mounts:
            # A target inside another mount (/tmp/ray in the private /tmp) is made there by container_init.
            if not any(o is not m and m.target.startswith(o.target.rstrip("/") + "/") for o in mounts):
                self._ensure_target(m)
        run_index = c.restart_count + (1 if c.runs else 0)
        spec = {
            "hostname": pod_hostname(pod)[0], "argv": argv, "env": env,
            "workdir": c.spec.get("workingDir") or "/",
            "mounts": [{"source": m.source, "target": m.target, "read_only": m.read_only} for m in mounts],
            "detach": ["/run/netns", str(self.dir)], "keep": [str(st.dir)],
        }
        spec_path = cdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        logdir = st.dir / "logs" / c.name
        logdir.mkdir(parents=True, exist_ok=True)
        logfile = logdir / f"{run_index}.log"
        c.logfile = logfile
        cmd = [sys.executable, str(INIT), str(spec_path)]
        cmd = ["unshare", "--mount", "--uts", "--propagation", "private", "--", *cmd]
        if st.netns:
            cmd = ["nsenter", f"--net=/run/netns/{st.netns}", "--", *cmd]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/", env={"PATH": STANDARD_PATH})
        c.proc = proc
        c.env = env
        c.started_at = time.time()
        if c.exited is not None:
            c.last = {"terminated": c.exited}
        c.exited = None
        c.forced_exit = None
        c.waiting = None
        c.runs += 1
        c.ready = False
        c.log_done = threading.Event()
        c.stop_probes = threading.Event()
        c.started = "startupProbe" not in c.spec
        (cdir / "pid").write_text(str(proc.pid))
        self._save(st)
        threading.Thread(target=self._pump_log, args=(proc, logfile, c.log_done), daemon=True,
                         name=f"log-{st.name}-{c.name}").start()
        threading.Thread(target=self._wait, args=(st, c, proc), daemon=True,
                         name=f"wait-{st.name}-{c.name}").start()
        if not c.init:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in c.spec:
                    threading.Thread(target=self._probe_loop, args=(st, c, kind, c.stop_probes), daemon=True,
                                     name=f"{kind}-{st.name}-{c.name}").start()
        log.info("started %s/%s container %s (pid %d): %s", st.namespace, st.name, c.name, proc.pid,
                 " ".join(argv)[:200])

    def _ensure_target(self, m: Mount) -> None:
        target = Path(m.target)
        if target.exists() or target.is_symlink():
            return
        missing = []
        p = target
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        is_dir = Path(m.source).is_dir() or not Path(m.source).exists()
        if is_dir:
            Path(m.source).mkdir(parents=True, exist_ok=True)
        for q in reversed(missing):
            if q == target and not is_dir:
                q.touch()
            else:
                q.mkdir(exist_ok=True)
            self.created_paths.append(str(q))
        with open(self.dir / "created-paths", "a") as f:
            f.writelines(f"{q}\n" for q in reversed(missing))

    def _pump_log(self, proc: subprocess.Popen[bytes], path: Path, done: threading.Event) -> None:
        assert proc.stdout is not None
        try:
            with open(path, "ab", buffering=0) as out:
                for line in proc.stdout:
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                    frac = f"{time.time() % 1:.6f}"[1:]
                    out.write(f"{stamp}{frac}Z ".encode() + (line if line.endswith(b"\n") else line + b"\n"))
        except (OSError, ValueError):
            pass
        finally:
            done.set()

    def _wait(self, st: PodState, c: Container, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        kill_group(proc.pid, signal.SIGKILL)  # whatever the container left running in its group
        finished = time.time()
        c.log_done.wait(2.0)
        with st.lock:
            if c.proc is not proc:
                return
            c.stop_probes.set()
            exit_code = c.forced_exit if c.forced_exit is not None else (128 - code if code < 0 else code)
            reason = "Completed" if exit_code == 0 else "Error"
            c.exited = {"exitCode": exit_code, "reason": reason, "startedAt": iso(c.started_at),
                        "finishedAt": iso(finished),
                        "containerID": f"process://{st.uid}/{c.name}/{c.restart_count}"}
            message = termination_message(c.spec, exit_code, c.logfile)
            if message:
                c.exited["message"] = message
            c.ready = False
            ran = finished - c.started_at
            if ran > 2 * MAX_BACKOFF:
                c.backoff_exp = 0
            base = number(st.pod, "restart-backoff-seconds", 10.0) or 10.0
            delay = 0.0 if c.backoff_exp == 0 else min(MAX_BACKOFF, base * 2 ** (c.backoff_exp - 1))
            c.backoff_exp += 1
            c.next_start = finished + delay
            c.backoff_delay = delay
            self._save(st)
            log.info("%s/%s container %s exited with %d", st.namespace, st.name, c.name, exit_code)
        if not st.torn_down:
            self.notify(st.namespace, st.name)

    # -- probes --------------------------------------------------------------------------------------------------

    def _probe_loop(self, st: PodState, c: Container, kind: str, stop: threading.Event) -> None:
        probe = c.spec[kind]
        if kind != "startupProbe":
            while not c.started:
                if stop.wait(0.2):
                    return
        if stop.wait(float(probe.get("initialDelaySeconds", 0))):
            return
        period = float(probe.get("periodSeconds", 10))
        success_needed = int(probe.get("successThreshold", 1))
        failure_needed = int(probe.get("failureThreshold", 3))
        successes = failures = 0
        while not stop.is_set():
            ok = self._probe_once(st, c, probe)
            if stop.is_set():
                return
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            changed = False
            with st.lock:
                if c.proc is None or stop.is_set():
                    return
                if kind == "readinessProbe":
                    if ok and successes >= success_needed and not c.ready:
                        c.ready = changed = True
                    elif not ok and failures >= failure_needed and c.ready:
                        c.ready = False
                        changed = True
                elif kind == "startupProbe":
                    if ok and successes >= success_needed:
                        c.started = changed = True
                    elif failures >= failure_needed:
                        log.info("%s/%s container %s failed its startup probe", st.namespace, st.name, c.name)
                        kill_group(c.proc.pid, signal.SIGKILL)
                        return
                elif not ok and failures >= failure_needed:
                    log.info("%s/%s container %s failed its liveness probe", st.namespace, st.name, c.name)
                    kill_group(c.proc.pid, signal.SIGTERM)
                    threading.Timer(GRACE_CAP, kill_group, args=(c.proc.pid, signal.SIGKILL)).start()
                    return
            if changed:
                self.notify(st.namespace, st.name)
            if kind == "startupProbe" and c.started:
                return
            if stop.wait(period):
                return

    def _probe_once(self, st: PodState, c: Container, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "exec" in probe:
                proc = c.proc
                if proc is None:
                    return False
                cmd = ["nsenter", "-t", str(proc.pid), "-n", "-m", "-u", "--wd", "--",
                       *probe["exec"].get("command", [])]
                try:
                    out = subprocess.run(cmd, env=c.env, capture_output=True, timeout=timeout,
                                         start_new_session=True)
                except subprocess.TimeoutExpired:
                    return False
                return out.returncode == 0
            if "httpGet" in probe:
                h = probe["httpGet"]
                host = h.get("host") or st.ip
                port = self._port(c, h.get("port"))
                conn: http.client.HTTPConnection
                if h.get("scheme", "HTTP").upper() == "HTTPS":
                    conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                       context=ssl._create_unverified_context())  # noqa: S323
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                try:
                    headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                    conn.request("GET", h.get("path", "/"), headers=headers)
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
            if "tcpSocket" in probe or "grpc" in probe:
                t = probe.get("tcpSocket") or probe.get("grpc") or {}
                with socket.create_connection((t.get("host") or st.ip, self._port(c, t.get("port"))),
                                              timeout=timeout):
                    return True
        except (OSError, http.client.HTTPException, ValueError):
            return False
        return False

    @staticmethod
    def _port(c: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"no port named {port}")

    # -- views ---------------------------------------------------------------------------------------------------

    def _phase(self, st: PodState) -> str:
        if not st.set_up:
            return "Pending"
        for c in st.inits:
            if not (c.exited and c.exited["exitCode"] == 0):
                if c.exited and self._restart_policy(st, c) == "Never":
                    return "Failed"
                return "Pending"
        containers = list(st.containers.values())
        if not any(c.runs for c in containers):
            return "Pending"
        finals = []
        for c in containers:
            if c.exited is None:
                return "Running"
            policy = self._restart_policy(st, c)
            code = c.exited["exitCode"]
            if policy == "Always" or (policy == "OnFailure" and code != 0):
                return "Running"
            finals.append(code)
        return "Failed" if any(finals) else "Succeeded"

    def _view(self, st: PodState, now: float, phase: str, next_change: float | None) -> PodView:
        spec = st.pod.get("spec") or {}

        def view(c: Container) -> ContainerView:
            image = c.spec.get("image", "")
            if st.failed:
                state = {"terminated": c.exited or {"exitCode": 137, "reason": "Error",
                                                    "finishedAt": iso(st.failed[0])}}
                return ContainerView(c.name, image, state, c.last, False, c.restart_count, False)
            if c.running:
                state = {"running": {"startedAt": iso(c.started_at)}}
                ready = c.ready if "readinessProbe" in c.spec else c.started
                if c.init:
                    ready = False
                return ContainerView(c.name, image, state, c.last, ready, c.restart_count, c.started)
            if c.exited is not None:
                policy = self._restart_policy(st, c)
                restarting = policy == "Always" or (policy == "OnFailure" and c.exited["exitCode"] != 0)
                if restarting and not (c.init and c.exited["exitCode"] == 0):
                    delay = c.backoff_delay
                    state = {"waiting": {"reason": "CrashLoopBackOff",
                                         "message": f"back-off {int(delay)}s restarting failed container="
                                                    f"{c.name} pod={st.name}_{st.namespace}({st.uid})"}}
                    return ContainerView(c.name, image, state, {"terminated": c.exited}, False,
                                         c.restart_count, False)
                return ContainerView(c.name, image, {"terminated": c.exited}, c.last, False, c.restart_count,
                                     False)
            if c.waiting:
                return ContainerView(c.name, image, {"waiting": {"reason": c.waiting[0],
                                                                 "message": c.waiting[1]}},
                                     c.last, False, c.restart_count, False)
            reason = "PodInitializing" if c.init or st.inits else "ContainerCreating"
            state = {"waiting": {"reason": reason}}
            if st.setup_error:
                state = {"waiting": {"reason": "CreateContainerConfigError", "message": st.setup_error}}
            return ContainerView(c.name, image, state, c.last, False, c.restart_count, False)

        if not st.containers:
            for c in spec.get("containers") or []:
                st.containers[c["name"]] = Container(c["name"], c, False)
            st.inits = [Container(c["name"], c, True) for c in spec.get("initContainers") or []]
        reason = message = None
        if st.failed:
            reason, message = st.failed[1], st.failed[2]
        return PodView([view(c) for c in st.containers.values()], [view(c) for c in st.inits], phase, reason,
                       message, next_change)

    # -- pod set-up and teardown ---------------------------------------------------------------------------------

    def base_env(self, st: PodState) -> dict[str, str]:
        host, port = self.gateway, str(self.api_port)
        return {
            "PATH": f"{VENV_BIN}:{STANDARD_PATH}", "HOME": "/root", "HOSTNAME": pod_hostname(st.pod)[0],
            "LANG": "C.UTF-8", "VIRTUAL_ENV": str(VENV_BIN.parent),
            "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp", f"KUBERNETES_PORT_{port}_TCP_PORT": port,
            f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
        }

    def _save(self, st: PodState) -> None:
        data = {"uid": st.uid, "namespace": st.namespace, "name": st.name, "ip": st.ip, "netns": st.netns,
                "restarts": {c.name: c.restart_count for c in list(st.containers.values()) + st.inits},
                "pids": {c.name: c.proc.pid for c in list(st.containers.values()) + st.inits
                         if c.proc is not None and c.exited is None}}
        try:
            (st.dir / "pod.json").write_text(json.dumps(data))
        except OSError:
            pass

    def _set_up(self, st: PodState, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        if not st.containers:
            for c in spec.get("containers") or []:
                st.containers[c["name"]] = Container(c["name"], c, False)
            st.inits = [Container(c["name"], c, True) for c in spec.get("initContainers") or []]
        previous: dict[str, Any] = {}
        if (st.dir / "pod.json").exists():
            try:
                previous = json.loads((st.dir / "pod.json").read_text())
            except ValueError:
                previous = {}
        st.dir.mkdir(parents=True, exist_ok=True)
        st.ip = self.ip_of(pod)
        # Volumes first: a missing ConfigMap keeps the pod in ContainerCreating, as on a kubelet.
        for volume in spec.get("volumes") or []:
            target = Path(volume_source_dir(st.dir, volume))
            kind = volume_kind(volume)
            if kind == "hostPath":
                if volume["hostPath"].get("type") in ("DirectoryOrCreate",) and not target.exists():
                    target.mkdir(parents=True)
                continue
            files = volume_files(pod, volume, st.ip, self.lookup, self.allocatable)
            if target.exists() and kind != "emptyDir":
                shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True, exist_ok=True)
            if kind == "emptyDir" and (volume.get("emptyDir") or {}).get("medium") == "Memory":
                if not os.path.ismount(target):
                    size = (volume["emptyDir"] or {}).get("sizeLimit")
                    opts = "mode=1777" + (f",size={size.replace('i', '')}" if size else "")
                    run("mount", "-t", "tmpfs", "-o", opts, f"rayop-{st.uid[:8]}", str(target))
            elif kind == "emptyDir":
                os.chmod(target, 0o1777)
            elif kind == "unsupported":
                log.warning("pod %s/%s: volume %s is of an unsupported kind; an empty folder stands in",
                            st.namespace, st.name, volume["name"])
            for rel, (content, mode) in (files or {}).items():
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                os.chmod(path, mode)
        self.write_hosts(st)
        (st.dir / "resolv.conf").write_text(render_resolv(pod))
        if HOST_PROFILE.exists():
            (st.dir / "profile").write_text(container_profile(HOST_PROFILE.read_text(errors="replace")))
        if st.netns:
            self._set_up_network(st)
        for c in list(st.containers.values()) + st.inits:
            before = (previous.get("restarts") or {}).get(c.name)
            if before is not None:
                # The agent restarted: the old run is gone and this start counts as a restart.
                c.restarts_before = int(before) + 1
                c.last = {"terminated": {"exitCode": 137, "reason": "Error",
                                         "message": "the node agent restarted", "finishedAt": iso(time.time())}}
        st.set_up = True
        st.setup_error = None
        self._save(st)

    def _set_up_network(self, st: PodState) -> None:
        assert st.netns
        if st.netns in list_netns(st.netns):
            remove_netns(st.netns)
        run("ip", "netns", "add", st.netns)
        run("ip", "link", "add", st.veth, "type", "veth", "peer", "name", "eth0", "netns", st.netns)
        run("ip", "link", "set", st.veth, "master", self.bridge, "up")
        run("ip", "-n", st.netns, "addr", "add", f"{st.ip}/{self.prefix_len}", "dev", "eth0")
        run("ip", "-n", st.netns, "link", "set", "eth0", "up")
        run("ip", "-n", st.netns, "link", "set", "lo", "up")
        run("ip", "-n", st.netns, "route", "add", "default", "via", self.gateway)

    def _stop_containers(self, st: PodState, grace: float) -> None:
        with st.lock:
            procs = [c.proc for c in list(st.containers.values()) + st.inits
                     if c.proc is not None and c.exited is None]
            for c in list(st.containers.values()) + st.inits:
                c.stop_probes.set()
        for p in procs:
            kill_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:
            kill_group(p.pid, signal.SIGKILL)
        if st.netns:
            kill_netns_processes(st.netns, attempts=50)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def _teardown(self, st: PodState, remove_dir: bool, grace: float = GRACE_CAP) -> None:
        with st.lock:
            already = st.torn_down
            st.torn_down = True
        if not already:
            self._stop_containers(st, grace)
            unmount_under(st.dir)
            if st.netns:
                remove_netns(st.netns)
                run("ip", "link", "del", st.veth, check=False)
            log.info("tore down pod %s/%s", st.namespace, st.name)
        if remove_dir:
            shutil.rmtree(st.dir, ignore_errors=True)
            with self._lock:
                if self._pods.get(st.uid) is st:
                    del self._pods[st.uid]

    # -- services ------------------------------------------------------------------------------------------------

    def write_hosts(self, st: PodState) -> None:
        text = render_hosts(st.pod, st.ip, self.services)
        path = st.dir / "hosts"
        # In place: the file is bind-mounted, and a rename would leave containers on the old inode.
        with open(path, "a+") as f:
            f.seek(0)
            if f.read() == text:
                return
            f.seek(0)
            f.truncate()
            f.write(text)

    def _services_changed(self) -> None:
        services: Endpoints = {}
        for key, eps in self._slices.values():
            services.setdefault(key, []).extend(eps)
        self.services = services
        with self._lock:
            pods = [st for st in self._pods.values() if st.set_up and not st.torn_down]
        for st in pods:
            try:
                self.write_hosts(st)
            except OSError:
                pass

    def watch_endpoints(self) -> None:
        path = "/apis/discovery.k8s.io/v1/endpointslices"
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                listing = self.client.get(path)
                self._slices = {}
                for s in listing["items"]:
                    self._slice(s, False)
                self._services_changed()
                rv = listing["metadata"]["resourceVersion"]
                backoff = 0.5
                while not self.stopping.is_set():
                    for event in self.client.watch(path, {"resourceVersion": rv, "allowWatchBookmarks": "true",
                                                          "timeoutSeconds": 300}, timeout=330):
                        obj = event["object"]
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        self._slice(obj, event["type"] == "DELETED")
                        self._services_changed()
            except Exception as e:  # noqa: BLE001 - relist after any failure
                if self.stopping.is_set():
                    return
                log.info("EndpointSlice watch restarting after: %s", e)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _slice(self, obj: dict[str, Any], deleted: bool) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        parsed = endpoints_of(obj)
        if deleted or parsed is None:
            self._slices.pop(key, None)
        else:
            self._slices[key] = parsed

    # -- for the kubelet server and exec -------------------------------------------------------------------------

    def find(self, namespace: str, name: str) -> PodState | None:
        with self._lock:
            for st in self._pods.values():
                if st.namespace == namespace and st.name == name and not st.torn_down:
                    return st
            for st in self._pods.values():
                if st.namespace == namespace and st.name == name:
                    return st
        return None

    def log_file(self, namespace: str, name: str, container: str, previous: bool) -> tuple[Path, Callable[[], bool]]:
        """The log file of a container's current (or previous) run and a function telling whether it may grow."""
        st = self.find(namespace, name)
        if st is None:
            raise KeyError(f'pods "{name}" not found')
        with st.lock:
            c = st.containers.get(container) or next((x for x in st.inits if x.name == container), None)
            if c is None:
                raise KeyError(f"container {container} is not valid for pod {name}")
            if not c.runs:
                raise ValueError(f'container "{container}" in pod "{name}" is waiting to start')
            index = c.restart_count - (1 if previous else 0)
            live = c.running and not previous
            if index < 0:
                raise ValueError(f'previous terminated container "{container}" in pod "{name}" not found')
            proc = c.proc
        path = st.dir / "logs" / container / f"{index}.log"
        done = c.log_done
        return path, (lambda: live and not done.is_set() and proc is not None and c.proc is proc)


def ensure_bridge(bridge: str, gateway: str, prefix_len: int) -> None:
    if run("ip", "link", "show", bridge, check=False).returncode != 0:
        run("ip", "link", "add", bridge, "type", "bridge")
    addrs = run("ip", "-o", "addr", "show", "dev", bridge).stdout
    if f" {gateway}/" not in addrs:
        run("ip", "addr", "add", f"{gateway}/{prefix_len}", "dev", bridge)
    run("ip", "link", "set", bridge, "up")


def list_netns(prefix: str) -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].startswith(prefix)]


class ApiForwarder:
    """Forwards TCP from the bridge address to the API server on loopback, so pods reach it."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(128)
        threading.Thread(target=self._accept, name="api-forward", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
        t.start()
        pipe(conn, upstream)
        t.join()
        conn.close()
        upstream.close()

    def close(self) -> None:
        self.sock.close()
