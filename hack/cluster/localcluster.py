#!/usr/bin/env python3
"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the node agent.

Usage: localcluster.py up [--process] [--nodes N] [--apiservers 1|2] | down | status | env |
       restart|stop|start|pause|resume COMPONENT | logs COMPONENT | exec POD [-n NAMESPACE] [-c CONTAINER] -- COMMAND... |
       can-process

Guarantees:
- Everything listens on 127.0.0.1, on ports picked free at `up`; state (PKI, etcd data, kubeconfigs, logs, pid
  files) lives in RAYOP_CLUSTER_DIR (default $RAYOP_CACHE/cluster, ~/.cache/rayop/cluster), never in the repository.
- `up` is idempotent: when the recorded processes are alive and the API server answers, it changes nothing.
- `down` stops every process group it started, waits for their ports to close and removes the state folder.
- Only the standard library and the `openssl` command are used, so it runs before any virtualenv exists; the node
  agent runs with the project's virtualenv Python.
- Process mode (`up --process`, root only): the node agent runs pods as processes on a bridge `rayop<i>` with
  subnet 10.(244+i).0.0/16 (the first free i, 0 normally) and network namespaces `rayop-*` (`rayop<i>-*` for
  i > 0). The API server stays on 127.0.0.1 but advertises the bridge address (lease endpoint reconciler), where
  the agent forwards to it, so the `kubernetes` Service and KUBERNETES_SERVICE_HOST lead pods to it; it reaches the
  agent's kubelet endpoint for `kubectl logs` with a client certificate. `down` also removes the bridge, every
  namespace of that prefix, the mounts under the state folder and the mount points the agent created.
  `exec` runs a command inside a pod container's network, mount and UTS namespaces with its environment (the
  container's configured one, as `kubectl exec` gives it). `can-process` says whether process mode can run here.
- `up --apiservers 2` runs a second kube-apiserver (`kube-apiserver-2`) on the same etcd with the same flags and PKI
  on a port of its own, with its own kubeconfig (`admin-2.kubeconfig`, exported by `env` as RAYOP_KUBECONFIG_2);
  everything else (controller-manager, scheduler, node agent) talks to the first one. On a cluster already up it
  adds the second API server. `pause C` / `resume C` send SIGSTOP / SIGCONT to a component's process group: a
  paused kube-apiserver answers nothing and its watch cache stops following etcd until it is resumed.
  RAYOP_APISERVER_2_ETCD_SERVERS, set when kube-apiserver-2 is (re)started, points it at another etcd address.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "nodeagent"))
from hostcleanup import remove_created, remove_netns  # noqa: E402

HACK = Path(__file__).resolve().parent.parent
REPO = HACK.parent
CACHE = Path(os.environ.get("RAYOP_CACHE") or Path.home() / ".cache" / "rayop")
STATE = Path(os.environ.get("RAYOP_CLUSTER_DIR") or CACHE / "cluster")
PYTHON = os.environ.get("RAYOP_PYTHON", str(REPO / ".venv" / "bin" / "python"))
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent")
# Optional components: started only when asked for (`up --apiservers 2`), not needed for the cluster to be up.
APISERVER_2 = "kube-apiserver-2"
ALL_COMPONENTS = (*COMPONENTS, APISERVER_2)
# The watch cache is off for PodTemplates only, so tests can observe etcd compaction (410 Gone) for real on a
# resource nothing else uses, while every other resource is served from the cache as in a production cluster.
NO_WATCH_CACHE = "podtemplates#0"


def log(msg: str) -> None:
    print(f"local-cluster: {msg}", file=sys.stderr, flush=True)


# -- state ------------------------------------------------------------------------------------------------------


def load_state() -> dict:
    path = STATE / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(state: dict) -> None:
    tmp = STATE / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE / "state.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


# -- PKI --------------------------------------------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def issue_cert(pki: Path, name: str, subject: str, sans: str | None = None, server: bool = False) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / f"{name}.key"), "-out",
            str(pki / f"{name}.csr"), "-subj", subject)
    ext = pki / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment",
             f"extendedKeyUsage={'serverAuth,clientAuth' if server else 'clientAuth'}"]
    if sans:
        lines.append(f"subjectAltName={sans}")
    ext.write_text("\n".join(lines) + "\n")
    openssl("x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
            str(pki / "ca.key"), "-CAcreateserial", "-out", str(pki / f"{name}.crt"), "-days", "3650",
            "-extfile", str(ext))
    (pki / f"{name}.csr").unlink()
    ext.unlink()


def make_pki(pki: Path) -> None:
    if (pki / "admin.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / "ca.key"), "-out",
            str(pki / "ca.crt"), "-days", "3650", "-subj", "/CN=rayop-local-ca")

    def issue(name: str, subject: str, sans: str | None = None, server: bool = False) -> None:
        issue_cert(pki, name, subject, sans, server)

    issue("apiserver", "/CN=kube-apiserver",
          f"IP:127.0.0.1,IP:{SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
          "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" + extra_sans(), server=True)
    issue("admin", "/O=system:masters/CN=kubernetes-admin")
    issue("controller-manager", "/CN=system:kube-controller-manager")
    issue("scheduler", "/CN=system:kube-scheduler")
    issue("node-agent", "/O=system:masters/CN=rayop-node-agent")
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def make_process_pki(pki: Path) -> None:
    """Process mode: the agent's kubelet serving certificate and the API server's client certificate for it."""
    if not (pki / "kubelet.crt").exists():
        issue_cert(pki, "kubelet", "/O=system:nodes/CN=system:node:rayop-node-agent", "IP:127.0.0.1,DNS:localhost",
                   server=True)
    if not (pki / "apiserver-kubelet-client.crt").exists():
        issue_cert(pki, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")


def extra_sans() -> str:
    # The process-mode bridge address, so pods in their own network namespaces can verify the server.
    addr = os.environ.get("RAYOP_APISERVER_EXTRA_IP")
    return f",IP:{addr}" if addr else ""


def kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rayop-local", "cluster": {"server": server,
                                                         "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(pki / f"{user}.crt"),
                                          "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "rayop-local", "context": {"cluster": "rayop-local", "user": user}}],
        "current-context": "rayop-local",
    }, indent=2))


# -- processes --------------------------------------------------------------------------------------------------


def commands(state: dict, bindir: Path) -> dict[str, list[str]]:
    d = Path(state["dir"])
    pki = d / "pki"
    p = state["ports"]
    etcd_url = f"http://127.0.0.1:{p['etcd']}"
    bind = state.get("bind_address", "127.0.0.1")
    cmds = {
        "etcd": [
            str(bindir / "etcd"), "--name", "default", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{p['etcd_peer']}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{p['etcd_peer']}",
            "--initial-cluster", f"default=http://127.0.0.1:{p['etcd_peer']}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(8 * 1024**3), "--log-level", "warn",
        ],
        "kube-apiserver": [
            str(bindir / "kube-apiserver"), "--etcd-servers", etcd_url,
            "--bind-address", bind, "--advertise-address", state.get("advertise_address", "127.0.0.1"),
            "--secure-port", str(p["apiserver"]),
            "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
            "--client-ca-file", str(pki / "ca.crt"),
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pki / "sa.pub"),
            "--service-account-signing-key-file", str(pki / "sa.key"),
            "--service-cluster-ip-range", SERVICE_CIDR, "--authorization-mode", "Node,RBAC",
            "--allow-privileged=true", "--endpoint-reconciler-type", "none",
            "--watch-cache-sizes", NO_WATCH_CACHE, "--profiling=false",
            "--max-requests-inflight", "1000", "--max-mutating-requests-inflight", "500",
            "--kubelet-certificate-authority", str(pki / "ca.crt"),
            "--v", "1",
        ],
        "kube-controller-manager": [
            str(bindir / "kube-controller-manager"),
            "--kubeconfig", str(d / "controller-manager.kubeconfig"),
            "--authentication-kubeconfig", str(d / "controller-manager.kubeconfig"),
            "--authorization-kubeconfig", str(d / "controller-manager.kubeconfig"),
            "--bind-address", "127.0.0.1", "--secure-port", str(p["controller_manager"]),
            "--leader-elect=false", "--root-ca-file", str(pki / "ca.crt"),
            "--service-account-private-key-file", str(pki / "sa.key"),
            "--use-service-account-credentials=true", "--cluster-signing-cert-file", str(pki / "ca.crt"),
            "--cluster-signing-key-file", str(pki / "ca.key"),
            "--controllers", "*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle-controller,-route",
            "--kube-api-qps", "200", "--kube-api-burst", "400", "--concurrent-gc-syncs", "40",
            "--concurrent-job-syncs", "20", "--v", "1",
        ],
        "kube-scheduler": [
            str(bindir / "kube-scheduler"), "--kubeconfig", str(d / "scheduler.kubeconfig"),
            "--authentication-kubeconfig", str(d / "scheduler.kubeconfig"),
            "--authorization-kubeconfig", str(d / "scheduler.kubeconfig"),
            "--bind-address", "127.0.0.1", "--secure-port", str(p["scheduler"]), "--leader-elect=false",
            "--kube-api-qps", "200", "--kube-api-burst", "400", "--v", "1",
        ],
        "node-agent": [
            PYTHON, str(HACK / "nodeagent" / "main.py"), "--kubeconfig", str(d / "node-agent.kubeconfig"),
            "--nodes", str(state["nodes"]), "--mode", state["mode"], "--control-port", str(p["node_agent"]),
            "--state-dir", str(d / "nodeagent"),
        ],
    }
    if "apiserver_2" in p:
        api2 = list(cmds["kube-apiserver"])
        api2[api2.index("--secure-port") + 1] = str(p["apiserver_2"])
        # A test may put something between the second API server and etcd (a relay it can pause, so the server's
        # watch cache lags while it keeps serving); read when the component starts.
        api2[api2.index("--etcd-servers") + 1] = os.environ.get("RAYOP_APISERVER_2_ETCD_SERVERS") or etcd_url
        cmds[APISERVER_2] = api2
    if state["mode"] == "process":
        api = cmds["kube-apiserver"]
        api[api.index("--endpoint-reconciler-type") + 1] = "lease"
        api += ["--kubelet-client-certificate", str(pki / "apiserver-kubelet-client.crt"),
                "--kubelet-client-key", str(pki / "apiserver-kubelet-client.key"),
                "--kubelet-preferred-address-types", "InternalIP"]
        cmds["node-agent"] += ["--bridge", state["bridge"], "--pod-cidr", state["pod_cidr"],
                               "--netns-prefix", state["netns_prefix"], "--kubelet-port", str(p["kubelet"]),
                               "--pki-dir", str(pki)]
    return cmds


def start(name: str, state: dict, bindir: Path) -> None:
    d = Path(state["dir"])
    cmd = commands(state, bindir)[name]
    (d / "logs").mkdir(exist_ok=True)
    out = open(d / "logs" / f"{name}.log", "ab")
    env = dict(os.environ)
    env.setdefault("GOMAXPROCS", "2")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=str(d))
    out.close()
    state["pids"][name] = proc.pid
    save_state(state)


def stop(name: str, state: dict, timeout: float = 20.0) -> None:
    pid = state.get("pids", {}).get(name)
    if not pid or not alive(pid):
        state.get("pids", {}).pop(name, None)
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_alive(pid):
            reap(pid)
            time.sleep(0.1)
        if not group_alive(pid):
            break
    reap(pid)
    state["pids"].pop(name, None)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Only zombies left in the group count as gone.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().split(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def https_get(state: dict, path: str, timeout: float = 2.0, port_key: str = "apiserver") -> tuple[int, str]:
    d = Path(state["dir"])
    ctx = ssl.create_default_context(cafile=str(d / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(d / "pki" / "admin.crt"), str(d / "pki" / "admin.key"))
    url = f"https://127.0.0.1:{state['ports'][port_key]}{path}"
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def wait_for(what: str, check, timeout: float, state: dict, component: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if component and not alive(state["pids"].get(component)):
            tail(state, component)
            raise SystemExit(f"local-cluster: {component} exited while waiting for {what}")
        time.sleep(0.2)
    if component:
        tail(state, component)
    raise SystemExit(f"local-cluster: timed out after {timeout:.0f}s waiting for {what}")


def tail(state: dict, component: str, lines: int = 30) -> None:
    path = Path(state["dir"]) / "logs" / f"{component}.log"
    if path.exists():
        text = path.read_text(errors="replace").splitlines()[-lines:]
        print("\n".join(f"  {component}| {line}" for line in text), file=sys.stderr)


def api_ready(state: dict) -> bool:
    return https_get(state, "/readyz")[0] == 200


def api2_ready(state: dict) -> bool:
    return https_get(state, "/readyz", port_key="apiserver_2")[0] == 200


def add_apiserver_2(state: dict) -> None:
    """Start the second kube-apiserver (same etcd, flags and PKI; its own port and kubeconfig)."""
    if alive(state["pids"].get(APISERVER_2)):
        return
    state["ports"].setdefault("apiserver_2", free_port())
    state["apiservers"] = 2
    save_state(state)
    kubeconfig(Path(state["dir"]) / "admin-2.kubeconfig", f"https://127.0.0.1:{state['ports']['apiserver_2']}",
               Path(state["dir"]) / "pki", "admin")
    start(APISERVER_2, state, Path(state["bin"]))
    wait_for("kube-apiserver-2 /readyz", lambda: api2_ready(state), 90, state, APISERVER_2)
    log(f"second API server up: https://127.0.0.1:{state['ports']['apiserver_2']}")


def default_sa_ready(state: dict) -> bool:
    code, _ = https_get(state, "/api/v1/namespaces/default/serviceaccounts/default")
    code2, _ = https_get(state, "/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
    return code == 200 and code2 == 200


def nodes_ready(state: dict) -> bool:
    code, body = https_get(state, "/api/v1/nodes")
    if code != 200:
        return False
    items = json.loads(body)["items"]
    ready = [n for n in items if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in n.get("status", {}).get("conditions", []))]
    return len(ready) >= state["nodes"]


def bin_dir() -> Path:
    out = subprocess.run([str(HACK / "build-control-plane.sh")], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


# -- commands ---------------------------------------------------------------------------------------------------


def is_up(state: dict) -> bool:
    return bool(state) and all(alive(state.get("pids", {}).get(c)) for c in COMPONENTS) and api_ready(state)


def cmd_up(args: argparse.Namespace) -> None:
    state = load_state()
    mode = "process" if args.process else "sim"
    if is_up(state):
        if state.get("mode") != mode and args.process:
            raise SystemExit(f"local-cluster: already up in {state['mode']} mode; run down first")
        log(f"already up ({state['mode']} mode, {state['nodes']} node(s)), API server "
            f"https://127.0.0.1:{state['ports']['apiserver']}")
        if args.apiservers >= 2:
            add_apiserver_2(state)
        return
    if state:
        log("found a partial cluster; cleaning it up first")
        cmd_down(args)
    t0 = time.monotonic()
    if not Path(PYTHON).exists():
        raise SystemExit(f"local-cluster: {PYTHON} missing; run `make venv` first")
    if mode == "process":
        problem = process_mode_problem()
        if problem:
            raise SystemExit(f"local-cluster: process mode is not available here: {problem}")
    bindir = bin_dir()
    STATE.mkdir(parents=True, exist_ok=True)
    state = {
        "dir": str(STATE), "mode": mode, "nodes": args.nodes, "bin": str(bindir), "pids": {},
        "ports": {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler",
                                           "node_agent")},
    }
    if mode == "process":
        index = free_bridge_index()
        state.update({"bridge": f"rayop{index}", "pod_cidr": f"10.{244 + index}.0.0/16",
                      "gateway": f"10.{244 + index}.0.1", "netns_prefix": "rayop-" if index == 0 else f"rayop{index}-",
                      "advertise_address": f"10.{244 + index}.0.1"})
        state["ports"]["kubelet"] = free_port()
        os.environ["RAYOP_APISERVER_EXTRA_IP"] = state["gateway"]
    save_state(state)
    pki = STATE / "pki"
    make_pki(pki)
    if mode == "process":
        make_process_pki(pki)
        subprocess.run(["ip", "link", "add", state["bridge"], "type", "bridge"], check=True, capture_output=True)
        subprocess.run(["ip", "addr", "add", f"{state['gateway']}/16", "dev", state["bridge"]], check=True,
                       capture_output=True)
        subprocess.run(["ip", "link", "set", state["bridge"], "up"], check=True, capture_output=True)
    server = f"https://127.0.0.1:{state['ports']['apiserver']}"
    kubeconfig(STATE / "admin.kubeconfig", server, pki, "admin")
    kubeconfig(STATE / "controller-manager.kubeconfig", server, pki, "controller-manager")
    kubeconfig(STATE / "scheduler.kubeconfig", server, pki, "scheduler")
    kubeconfig(STATE / "node-agent.kubeconfig", server, pki, "node-agent")
    try:
        start("etcd", state, bindir)
        wait_for("etcd", lambda: port_open(state["ports"]["etcd"]), 30, state, "etcd")
        start("kube-apiserver", state, bindir)
        wait_for("kube-apiserver /readyz", lambda: api_ready(state), 90, state, "kube-apiserver")
        start("kube-controller-manager", state, bindir)
        start("kube-scheduler", state, bindir)
        start("node-agent", state, bindir)
        wait_for(f"{args.nodes} Ready node(s)", lambda: nodes_ready(state), 60, state, "node-agent")
        wait_for("the default ServiceAccount and kube-root-ca.crt", lambda: default_sa_ready(state), 60, state,
                 "kube-controller-manager")
        if args.apiservers >= 2:
            add_apiserver_2(state)
    except BaseException:
        log("up failed; stopping what was started")
        cmd_down(args)
        raise
    log(f"up in {time.monotonic() - t0:.1f}s ({mode} mode, {args.nodes} node(s)): {server}")
    log(f"export KUBECONFIG={STATE / 'admin.kubeconfig'}")


def cmd_down(args: argparse.Namespace) -> None:
    state = load_state()
    if not state:
        log("not up")
        if STATE.exists():
            shutil.rmtree(STATE, ignore_errors=True)
        return
    for name in reversed(ALL_COMPONENTS):
        if name in state.get("pids", {}):
            resume(name, state)
        stop(name, state)
    if state.get("mode") == "process":
        clean_process_mode(state)
    ports = state.get("ports", {})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(port_open(p) for p in ports.values()):
        time.sleep(0.1)
    still = [f"{k}:{p}" for k, p in ports.items() if port_open(p)]
    if still:
        log(f"warning: ports still open after down: {', '.join(still)}")
    shutil.rmtree(STATE, ignore_errors=True)
    log("down")


def process_mode_problem() -> str | None:
    """Why process mode cannot run on this machine, or None."""
    if os.geteuid() != 0:
        return "it needs root (network namespaces, veth, bind mounts)"
    for tool in ("ip", "nsenter", "unshare", "mount", "umount"):
        if not shutil.which(tool):
            return f"`{tool}` is missing"
    probe = f"rayop-probe-{os.getpid()}"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if out.returncode != 0:
        return f"`ip netns add` fails: {out.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def cmd_can_process(args: argparse.Namespace) -> None:
    """Exit 0 when process mode can run here, else print why and exit 1 (`make run` picks its mode with it)."""
    problem = process_mode_problem()
    if problem:
        print(problem)
        raise SystemExit(1)
    print("process mode is available")


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def free_bridge_index() -> int:
    for index in range(10):
        if not link_exists(f"rayop{index}"):
            return index
    raise SystemExit("local-cluster: bridges rayop0..rayop9 all exist; bring other process-mode clusters down")


def clean_process_mode(state: dict) -> None:
    """After the agent stopped: nothing of the pods may remain (processes, namespaces, mounts, links)."""
    prefix = state.get("netns_prefix")
    if prefix:
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for name in [ln.split()[0] for ln in listing.splitlines() if ln.split() and ln.split()[0].startswith(prefix)]:
            remove_netns(name)
    base = str(Path(state["dir"]))
    points = [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((p for p in points if p == base or p.startswith(base + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    # Another control plane's containers may mount on the same host paths: remove_created leaves those.
    remove_created(Path(state["dir"]) / "nodeagent")
    if state.get("bridge") and link_exists(state["bridge"]):
        subprocess.run(["ip", "link", "del", state["bridge"]], capture_output=True)


def cmd_exec(args: argparse.Namespace) -> None:
    """Run a command in a pod container's namespaces (network, mount, UTS) with its environment."""
    state = load_state()
    if not state or state.get("mode") != "process":
        raise SystemExit("local-cluster: exec needs a cluster up in process mode")
    command = list(args.cmd)
    if not command:
        raise SystemExit("local-cluster: exec: no command given (exec POD [-n NS] [-c CONTAINER] -- CMD...)")
    code, body = https_get(state, f"/api/v1/namespaces/{args.namespace}/pods/{args.pod}")
    if code != 200:
        raise SystemExit(f"local-cluster: pod {args.namespace}/{args.pod}: {body.strip()[:200]}")
    pod = json.loads(body)
    names = [c["name"] for c in pod["spec"]["containers"]]
    default = (pod["metadata"].get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
    container = args.container or (default if default in names else names[0])
    pid_file = Path(state["dir"]) / "nodeagent" / "pods" / pod["metadata"]["uid"] / "containers" / container / "pid"
    try:
        pid = int(pid_file.read_text())
        env_raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError):
        raise SystemExit(f"local-cluster: container {container} of pod {args.namespace}/{args.pod} is not running")
    # The container's configured environment, as `kubectl exec` gives it; the main process's own may have been
    # changed by its command (a login shell's profile rewrites PATH, say).
    try:
        env = {str(k): str(v) for k, v in json.loads((pid_file.parent / "spec.json").read_text())["env"].items()}
    except (OSError, ValueError, KeyError):
        env = dict(item.split("=", 1) for item in env_raw.decode(errors="replace").split("\0") if "=" in item)
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    os.execve(nsenter, [nsenter, "-t", str(pid), "-n", "-m", "-u", "--wd", "--", *command], env)


def cmd_status(args: argparse.Namespace) -> None:
    state = load_state()
    if not state:
        print("down")
        raise SystemExit(1)
    for name in ALL_COMPONENTS:
        if name == APISERVER_2 and "apiserver_2" not in state["ports"]:
            continue
        pid = state["pids"].get(name)
        print(f"{name:26s} {'running' if alive(pid) else 'stopped':8s} pid={pid}")
    print(f"{'api server':26s} {'ready' if api_ready(state) else 'not ready':8s} "
          f"https://127.0.0.1:{state['ports']['apiserver']}")
    print(f"{'mode':26s} {state['mode']} ({state['nodes']} node(s))")
    if state.get("bridge"):
        print(f"{'bridge':26s} {state['bridge']} {state['pod_cidr']} (API server for pods: "
              f"{state['gateway']}:{state['ports']['apiserver']})")
    print(f"{'state':26s} {state['dir']}")
    if not is_up(state):
        raise SystemExit(1)


def cmd_env(args: argparse.Namespace) -> None:
    state = load_state()
    if not state:
        raise SystemExit("local-cluster: not up; run `hack/local-cluster.sh up`")
    print(f"export KUBECONFIG={shlex.quote(str(Path(state['dir']) / 'admin.kubeconfig'))}")
    print(f"export PATH={shlex.quote(str(REPO / '.venv' / 'bin'))}:\"$PATH\"")
    print(f"export RAYOP_ETCD_URL=http://127.0.0.1:{state['ports']['etcd']}")
    print(f"export RAYOP_NODE_AGENT_URL=http://127.0.0.1:{state['ports']['node_agent']}")
    if "apiserver_2" in state["ports"]:
        print(f"export RAYOP_KUBECONFIG_2={shlex.quote(str(Path(state['dir']) / 'admin-2.kubeconfig'))}")


def cmd_restart(args: argparse.Namespace) -> None:
    state = load_state()
    if not is_up(state):
        raise SystemExit("local-cluster: not up")
    name = args.component
    resume(name, state)
    stop(name, state)
    if name in ("kube-apiserver", APISERVER_2):
        port = state["ports"]["apiserver" if name == "kube-apiserver" else "apiserver_2"]
        wait_for(f"the old {name} port to close", lambda: not port_open(port), 20, state)
    start(name, state, Path(state["bin"]))
    wait_api(name, state)
    log(f"restarted {name}")


def wait_api(name: str, state: dict) -> None:
    if name == "kube-apiserver":
        wait_for("kube-apiserver /readyz", lambda: api_ready(state), 90, state, "kube-apiserver")
    elif name == APISERVER_2:
        wait_for("kube-apiserver-2 /readyz", lambda: api2_ready(state), 90, state, APISERVER_2)


def resume(name: str, state: dict) -> None:
    """SIGCONT a component's process group (harmless when it is not paused)."""
    pid = state.get("pids", {}).get(name)
    if pid and alive(pid):
        try:
            os.killpg(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def cmd_pause_component(args: argparse.Namespace) -> None:
    state = load_state()
    pid = state.get("pids", {}).get(args.component)
    if not pid or not alive(pid):
        raise SystemExit(f"local-cluster: {args.component} is not running")
    os.killpg(pid, signal.SIGSTOP)
    log(f"paused {args.component} (SIGSTOP)")


def cmd_resume_component(args: argparse.Namespace) -> None:
    state = load_state()
    if not alive(state.get("pids", {}).get(args.component)):
        raise SystemExit(f"local-cluster: {args.component} is not running")
    resume(args.component, state)
    log(f"resumed {args.component} (SIGCONT)")


def cmd_stop_component(args: argparse.Namespace) -> None:
    state = load_state()
    resume(args.component, state)
    stop(args.component, state)
    save_state(state)
    log(f"stopped {args.component}")


def cmd_start_component(args: argparse.Namespace) -> None:
    state = load_state()
    if args.component == APISERVER_2:
        add_apiserver_2(state)
    else:
        start(args.component, state, Path(state["bin"]))
        wait_api(args.component, state)
    log(f"started {args.component}")


def cmd_logs(args: argparse.Namespace) -> None:
    state = load_state()
    tail(state, args.component, args.lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="local-cluster.sh", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane (idempotent)")
    up.add_argument("--process", action="store_true", help="the node agent runs pods as local processes")
    up.add_argument("--nodes", type=int, default=int(os.environ.get("RAYOP_NODES", "2")))
    up.add_argument("--apiservers", type=int, choices=(1, 2), default=1,
                    help="2: a second kube-apiserver on the same etcd (kube-apiserver-2)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop everything and remove the state").set_defaults(func=cmd_down)
    sub.add_parser("status", help="print what runs").set_defaults(func=cmd_status)
    sub.add_parser("can-process", help="exit 0 if process mode can run on this machine, else say why and exit 1"
                   ).set_defaults(func=cmd_can_process)
    sub.add_parser("env", help="print shell exports (KUBECONFIG, PATH)").set_defaults(func=cmd_env)
    for verb, func in (("restart", cmd_restart), ("stop", cmd_stop_component), ("start", cmd_start_component),
                       ("pause", cmd_pause_component), ("resume", cmd_resume_component)):
        p = sub.add_parser(verb, help=f"{verb} one component")
        p.add_argument("component", choices=ALL_COMPONENTS)
        p.set_defaults(func=func)
    lg = sub.add_parser("logs", help="print the tail of a component's log")
    lg.add_argument("component", choices=ALL_COMPONENTS)
    lg.add_argument("-n", "--lines", type=int, default=50)
    lg.set_defaults(func=cmd_logs)
    ex = sub.add_parser("exec", help="process mode: run a command in a pod container's namespaces")
    ex.add_argument("pod")
    ex.add_argument("-n", "--namespace", default="default")
    ex.add_argument("-c", "--container", default=None)
    ex.set_defaults(func=cmd_exec)
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv[:1] == ["exec"] and "--" in argv:
        command = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parser.parse_args(argv)
    args.cmd = command
    args.func(args)


if __name__ == "__main__":
    main()
