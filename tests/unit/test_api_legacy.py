"""`ray up`'s Kubernetes contract in the configuration form: start commands, legacy flags, keep-alive commands,
ServiceAccounts and provider.services; checked on Ray's own example files (tests/data, sources in their headers)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from rayop.api.convert import effective_cluster
from rayop.api.legacy import RAY_START_FLAGS, container_env, expand, keep_alive
from rayop.api.model import Conversion, RayResources
from rayop.autoscaler import build_autoscaler_config, validate_with_ray
from rayop.build import build_children
from rayop.defaults import Options
from rayop.status import compute_status

DATA = Path(__file__).resolve().parents[1] / "data"
KEEP_ALIVE = ["/bin/bash", "-c", "--"], ["trap : TERM INT; sleep infinity & wait;"]


def convert(text: str, name: str = "legacy", namespace: str = "ray") -> Conversion:
    return effective_cluster(
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"configuration": textwrap.dedent(text)}}
    )


def data(name: str) -> str:
    return (DATA / name).read_text()


def keys(items: Any) -> list[str]:
    return [w.key for w in items]


def messages(items: Any) -> str:
    return "\n".join(str(w) for w in items)


def pod(env: str = "", command: bool = True, extra: str = "") -> str:
    """A legacy pod manifest (indented for head_node/worker_nodes) with the era's keep-alive command."""
    lines = [
        "apiVersion: v1",
        "kind: Pod",
        "spec:",
        f"    {extra}" if extra else "",
        "    containers:",
        "    - name: ray-node",
        "      image: rayproject/autoscaler",
    ]
    if command:
        lines += ['      command: ["/bin/bash", "-c", "--"]', '      args: ["trap : TERM INT; sleep infinity & wait;"]']
    lines += ["      resources:", "          requests: {cpu: 1500m, memory: 512Mi}", "          limits: {memory: 2Gi}"]
    if env:
        lines += ["      env:", *[f"      {line}" for line in env.splitlines()]]
    return "\n".join("    " + line for line in lines if line)


CPU_ENV = """\
- name: MY_CPU_REQUEST
  valueFrom: {resourceFieldRef: {resource: requests.cpu}}
- name: MY_MEM_LIMIT
  valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
- name: PORT
  value: "8076"
- name: POD_IP
  valueFrom: {fieldRef: {fieldPath: status.podIP}}"""


def legacy(head_start: str, worker_start: str = "ray start --address=$RAY_HEAD_IP:6379", env: str = CPU_ENV,
           extra: str = "") -> Conversion:
    text = (
        "max_workers: 2\n"
        f"head_node:\n{pod(env)}\n"
        f"worker_nodes:\n{pod(env)}\n"
        f"head_start_ray_commands:\n    - ray stop\n    - {head_start!r}\n"
        f"worker_start_ray_commands:\n    - ray stop\n    - {worker_start!r}\n"
        + extra
    )
    return convert(text)


# -- Ray's flags -------------------------------------------------------------------------------------------------------


def test_the_flag_list_is_the_installed_rays() -> None:
    from ray.scripts.scripts import start

    installed = {opt.lstrip("-") for p in start.params for opt in (*p.opts, *p.secondary_opts)}
    assert installed == set(RAY_START_FLAGS)


@pytest.mark.parametrize(
    "head_start, params, warned, noted",
    [
        # --redis-port is --port in Ray 2; 6379 is what the operator sets anyway.
        ("ray start --head --redis-port=6379", {}, [], []),
        ("ray start --head --redis-port=6380", {}, ["--redis-port=6380 ignored: the head's GCS always listens on 6379"],
         []),
        ("ray start --head --port 6379", {}, [], []),
        # --redis-password: no Redis in Ray 2; named in the status, the head still starts.
        ("ray start --head --redis-password=5241590000000000", {},
         ["--redis-password=5241590000000000 ignored: Ray 2 keeps cluster state in the GCS"], []),
        # --autoscaling-config: the operator's (silently, as every config of the era carries it).
        ("ray start --head --autoscaling-config=~/ray_bootstrap_config.yaml", {}, [], []),
        ("ray start --head --object-manager-port=8076", {"object-manager-port": "8076"}, [], []),
        ("ray start --head --object-manager-port=$PORT", {"object-manager-port": "8076"}, [],
         ["--object-manager-port=$PORT resolved to --object-manager-port=8076"]),
        # $MY_CPU_REQUEST: the kubelet's value of requests.cpu (1500m rounds up to 2).
        ("ray start --head --num-cpus=$MY_CPU_REQUEST", {"num-cpus": "2"}, [],
         ["--num-cpus=$MY_CPU_REQUEST resolved to --num-cpus=2"]),
        ("ray start --head --memory=${MY_MEM_LIMIT}000000", {"memory": "2048000000"}, [], ["resolved"]),
        ("ray start --head --num-cpus=$POD_IP", {}, ["--num-cpus=$POD_IP ignored: the pod template does not "
                                                     "determine $POD_IP"], []),
        ("ray start --head --num-cpus=$UNSET", {}, ["$UNSET"], []),
        ("ray start --head --webui-host 0.0.0.0", {"dashboard-host": "0.0.0.0"}, [],
         ["--webui-host is --dashboard-host in Ray 2"]),
        ("ray start --head --include-webui=false", {"include-dashboard": "false"}, [], ["--include-dashboard"]),
        ("ray start --head --num-redis-shards=2", {}, ["--num-redis-shards=2 ignored: Ray 2 keeps cluster state"], []),
        ("ray start --head --load-code-from-local", {}, ["--load-code-from-local ignored: removed in Ray 2"], []),
        ("ray start --head --made-up=1", {}, ["--made-up=1 ignored: not a flag of `ray start` in Ray 2"], []),
        ("ray start --head --node-ip-address=1.2.3.4", {}, ["--node-ip-address=1.2.3.4 ignored: the operator sets it"],
         []),
    ],
)
def test_head_start_flags(head_start: str, params: dict[str, str], warned: list[str], noted: list[str]) -> None:
    result = legacy(head_start)
    head = result.cluster.head
    assert dict(head.ray_start_params) == params
    got_warnings = messages(w for w in result.warnings if "head_start_ray_commands" in w.key)
    got_notes = messages(n for n in result.notes if "head_start_ray_commands" in n.key)
    assert len([w for w in result.warnings if "head_start_ray_commands" in w.key]) == len(warned), got_warnings
    for text in warned:
        assert text in got_warnings
    for text in noted:
        assert text in got_notes
    if not noted:
        assert got_notes == ""


def test_resolved_num_cpus_is_what_the_autoscaler_plans_with() -> None:
    result = legacy("ray start --head --num-cpus=$MY_CPU_REQUEST", "ray start --num-cpus=$MY_CPU_REQUEST "
                    "--address=$RAY_HEAD_IP:6379 --redis-password=x")
    (worker,) = result.cluster.worker_groups
    assert worker.resources == RayResources(cpu=2, memory=2 * 2**30)
    assert dict(worker.ray_start_params) == {"num-cpus": "2"}
    assert "--redis-password=x ignored" in messages(result.warnings)
    config = build_autoscaler_config(result.cluster)
    assert config["available_node_types"]["worker"]["resources"]["CPU"] == 2
    assert validate_with_ray(config) is None


def test_unresolved_num_cpus_falls_back_to_the_container() -> None:
    result = legacy("ray start --head --num-cpus=$MY_CPU_REQUEST", env="")
    assert result.cluster.head.resources.cpu == 2  # requests.cpu 1500m, rounded up
    assert "num-cpus" not in result.cluster.head.ray_start_params
    assert "resources come from the container's requests and limits instead" in messages(result.warnings)


def test_worker_flags_the_operator_sets_are_silent() -> None:
    result = legacy("ray start --head", "ray start --redis-address=$RAY_HEAD_IP:6379 --autoscaling-config=x --block")
    assert result.warnings == ()
    assert dict(result.cluster.worker_groups[0].ray_start_params) == {}


# -- shell commands around `ray start` ------------------------------------------------------------------------------


def test_shell_commands_run_before_ray_start_as_ray_up_ran_them() -> None:
    text = """\
    max_workers: 1
    setup_commands: [pip list]
    head_start_ray_commands:
        - ray stop
        - echo one && echo two; ulimit -n 65536; ray start --head
        - python -m ray.util.client.server --redis-address=0.0.0.0:6379 &
    worker_start_ray_commands:
        - export FOO=bar
        - ray start --address=$RAY_HEAD_IP:6379; echo done
        - echo after
    """
    result = convert(text)
    # The text before `ray start` is kept as written; after `;` its exit status does not matter, as under `ray up`.
    assert result.cluster.head.setup_commands == ("pip list", "{ echo one && echo two; ulimit -n 65536; true; }")
    assert "ray.util.client.server" in messages(result.notes)
    (worker,) = result.cluster.worker_groups
    assert worker.setup_commands == ("pip list", "export FOO=bar")
    assert sorted(keys(result.warnings)) == ["spec.configuration.worker_start_ray_commands[1]",
                                             "spec.configuration.worker_start_ray_commands[2]"]
    assert "'echo done' is not run: it comes after `ray start`" in messages(result.warnings)


@pytest.mark.parametrize(
    "command, kept",
    [
        ('export PATH="$HOME/bin:$PATH"; ray start --head', '{ export PATH="$HOME/bin:$PATH"; true; }'),
        ("source /opt/env.sh && ray start --head", "{ source /opt/env.sh; }"),
        ("my-daemon --flag & ray start --head", "{ my-daemon --flag & }"),
        # With a `ray stop` in front the parts are taken one by one.
        ("ray stop; ulimit -n 4096; ray start --head", "{ ulimit -n 4096; true; }"),
    ],
)
def test_text_before_ray_start(command: str, kept: str) -> None:
    assert convert(f"head_start_ray_commands: [{command!r}]").cluster.head.setup_commands == (kept,)


def test_setup_and_start_commands_keep_their_shell_semantics() -> None:
    """Run the script the operator builds in a real shell: a failing setup command stops it, a failing command
    before `;` does not, exported variables reach `ray start`, `ray stop` is gone."""
    import subprocess

    from rayop.build import ray_start_script

    def run(setup: str, start: str) -> str:
        text = f"max_workers: 0\nsetup_commands: [{setup!r}]\nhead_start_ray_commands: ['ray stop', {start!r}]\n"
        cluster = convert(text).cluster
        script = ray_start_script(cluster, cluster.head, Options()).replace("exec ray start", "echo RAY=$X ray start")
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10).stdout

    assert "RAY=1 ray start --head" in run("true", "false; export X=1; ray start --head")
    assert "ray start" not in run("false", "export X=1; ray start --head")
    assert "ray start" not in run("true", "false && ray start --head")


# -- the container's command -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, args, expected",
    [
        (*KEEP_ALIVE, True),
        (["/bin/bash", "-c", "--"], ["trap : TERM INT; sleep infinity & wait"], True),
        (["sleep", "infinity"], None, True),
        (["/bin/sh", "-c"], ["tail -f /dev/null"], True),
        (["bash", "-c", "while true; do sleep 30; done"], None, True),
        (["sleep", "36000"], None, True),
        (["sleep", "5"], None, False),
        (["/bin/bash", "-c", "--"], ["ray start --head --block"], False),
        (None, None, False),
    ],
)
def test_keep_alive(command: Any, args: Any, expected: bool) -> None:
    assert keep_alive(command, args) is expected


def test_keep_alive_command_is_replaced_by_the_start_commands() -> None:
    result = legacy("ray start --head --num-cpus=$MY_CPU_REQUEST")
    desired = build_children({"metadata": {"name": "legacy", "namespace": "ray", "uid": "u"}, "spec": {}},
                             result.cluster, Options(), programs={})
    container = desired.head.manifest["spec"]["containers"][0]
    assert container["command"] == ["/bin/bash", "-lc", "--"]
    assert "exec ray start --head" in container["args"][0] and "--num-cpus=2" in container["args"][0]
    assert "trap" not in container["args"][0]
    worker = desired.workers[0].manifest["spec"]["containers"][0]
    assert "exec ray start --block --address=legacy-head.ray.svc.cluster.local:6379" in worker["args"][0]
    assert keys(n for n in result.notes if "keep-alive" in n.message) == [
        "spec.configuration.head_node.spec.containers[0].command",
        "spec.configuration.worker_nodes.spec.containers[0].command",
    ]


def test_a_command_that_does_work_is_reported_and_one_using_the_start_command_kept() -> None:
    text = """\
    max_workers: 1
    head_node:
        spec:
            containers:
            - name: ray-node
              command: ["/bin/bash", "-c", "python /app/serve.py"]
    worker_nodes:
        spec:
            containers:
            - name: ray-node
              command: ["/bin/bash", "-c", "--"]
              args: ["prepare && eval \\"exec $RAYOP_RAY_START_COMMAND\\""]
    """
    result = convert(text)
    head, worker = result.cluster.head, result.cluster.worker_groups[0]
    assert head.template is not None and "command" not in head.template["spec"]["containers"][0]
    assert "'/bin/bash -c python /app/serve.py' is not run" in messages(result.warnings)
    assert worker.template is not None and worker.template["spec"]["containers"][0]["args"][0].startswith("prepare")


# -- ServiceAccounts ---------------------------------------------------------------------------------------------------


def test_accounts_the_configuration_asks_for_are_replaced_by_the_operators() -> None:
    extra = """\
provider:
    autoscaler_service_account: {apiVersion: v1, kind: ServiceAccount, metadata: {name: autoscaler}}
    autoscaler_role_binding: {subjects: [{kind: ServiceAccount, name: other}]}
"""
    head = pod(extra="serviceAccountName: autoscaler")
    worker = pod(extra="serviceAccountName: other")
    text = f"max_workers: 2\nhead_node:\n{head}\nworker_nodes:\n{worker}\n{extra}"
    result = convert(text)
    head, worker = result.cluster.head, result.cluster.worker_groups[0]
    assert head.template is not None and "serviceAccountName" not in head.template["spec"]
    assert worker.template is not None and "serviceAccountName" not in worker.template["spec"]
    desired = build_children({"metadata": {"name": "legacy", "namespace": "ray", "uid": "u"}, "spec": {}},
                             result.cluster, Options(), programs={})
    assert desired.head.manifest["spec"]["serviceAccountName"] == "legacy-autoscaler"
    assert "serviceAccountName" not in desired.workers[0].manifest["spec"]
    sa, _, binding = desired.autoscaler
    assert sa["metadata"]["name"] == "legacy-autoscaler"
    assert binding["subjects"][0]["name"] == "legacy-autoscaler"
    assert "'autoscaler' is the account the configuration asked `ray up` to create" in messages(result.notes)


def test_an_account_the_configuration_does_not_create_is_kept() -> None:
    text = f"max_workers: 1\nhead_node:\n{pod(extra='serviceAccountName: mine')}\n"
    head = convert(text).cluster.head
    assert head.template is not None and head.template["spec"]["serviceAccountName"] == "mine"


# -- provider.services -------------------------------------------------------------------------------------------------


SERVICES = """\
provider:
    services:
    - apiVersion: v1
      kind: Service
      metadata: {name: my-head, labels: {team: a}}
      spec:
          selector: {component: head}
          ports: [{name: client, port: 10001}]
    - metadata: {name: my-workers}
      spec: {selector: {component: worker}, type: NodePort, ports: [{port: 8000, targetPort: 8000}]}
    - metadata: {name: nobody}
      spec: {selector: {component: nothing}, ports: [{port: 1}]}
    - metadata: {name: legacy-head}
      spec: {selector: {component: head}, ports: [{port: 1}]}
    - metadata: {name: no-selector}
      spec: {ports: [{port: 1}]}
"""


def test_declared_services_select_the_pods_their_labels_mean() -> None:
    head = "    metadata: {labels: {component: head}}\n" + pod()
    worker = "    metadata: {labels: {component: worker}}\n" + pod()
    result = convert(f"max_workers: 1\nhead_node:\n{head}\nworker_nodes:\n{worker}\n{SERVICES}")
    services = {s.name: s for s in result.cluster.services}
    assert sorted(services) == ["my-head", "my-workers"]
    assert services["my-head"].targets == ("head",) and services["my-workers"].targets == ("worker",)
    warned = messages(result.warnings)
    assert "Service nobody not created: its selector (component=nothing) matches the labels of no pod" in warned
    assert "legacy-head is the operator's own head Service" in warned
    assert "Service no-selector not created: it needs a selector" in warned
    desired = build_children({"metadata": {"name": "legacy", "namespace": "ray", "uid": "u"}, "spec": {}},
                             result.cluster, Options(), programs={})
    by_name = {s["metadata"]["name"]: s for s in desired.services}
    my_head = by_name["my-head"]
    assert my_head["spec"]["selector"] == {"component": "head", "ray.k8s.io/cluster": "legacy",
                                           "app.kubernetes.io/managed-by": "rayop"}
    assert my_head["spec"]["ports"] == [{"protocol": "TCP", "name": "client", "port": 10001, "targetPort": 10001}]
    assert my_head["metadata"]["labels"]["team"] == "a"
    assert my_head["metadata"]["ownerReferences"][0]["uid"] == "u"
    assert by_name["my-workers"]["spec"]["type"] == "NodePort"
    # The head pods carry the labels the selector names.
    assert desired.head.manifest["metadata"]["labels"]["component"] == "head"
    assert [m["metadata"]["name"] for m in desired.singletons() if m["kind"] == "Service"] == [
        "legacy-head", "my-head", "my-workers"]


# -- Ray's own example files -------------------------------------------------------------------------------------------


IGNORED_EVERYWHERE = [
    "spec.configuration.cluster_name",
    "spec.configuration.provider.autoscaler_service_account",
    "spec.configuration.provider.autoscaler_role",
    "spec.configuration.provider.autoscaler_role_binding",
]


def test_ray_0_8_example_full() -> None:
    result = convert(data("ray-0.8-example-full.yaml"))
    assert result.form == "legacy"
    assert keys(result.warnings) == [*IGNORED_EVERYWHERE, "spec.configuration.head_node.metadata.generateName",
                                     "spec.configuration.worker_nodes.metadata.generateName"]
    cluster = result.cluster
    assert dict(cluster.head.ray_start_params) == {"num-cpus": "1", "object-manager-port": "8076",
                                                   "dashboard-host": "0.0.0.0"}
    assert cluster.head.setup_commands == ("{ ulimit -n 65536; true; }",)
    assert cluster.head.template is not None
    assert "serviceAccountName" not in cluster.head.template["spec"]
    assert "command" not in cluster.head.template["spec"]["containers"][0]
    (worker,) = cluster.worker_groups
    assert dict(worker.ray_start_params) == {"num-cpus": "1", "object-manager-port": "8076"}
    assert worker.template is not None and worker.template["spec"]["serviceAccountName"] == "default"
    assert [(s.name, s.targets) for s in cluster.services] == [("ray-head", ("head",)), ("ray-workers", ("worker",))]
    assert validate_with_ray(build_autoscaler_config(cluster)) is None


def test_ray_0_8_example_full_with_redis_port() -> None:
    result = convert(data("ray-0.8-example-full-redis-port.yaml"))
    assert dict(result.cluster.head.ray_start_params) == {"num-cpus": "1", "object-manager-port": "8076"}
    assert result.cluster.head.resources == RayResources(cpu=1, memory=20 * 2**30)
    assert not any("start_ray_commands" in w.key for w in result.warnings)


@pytest.mark.parametrize("name", ["ray-1.x-kubernetes-defaults.yaml", "rayvens-0.2.0-cluster.yaml"])
def test_available_node_types_configs(name: str) -> None:
    result = convert(data(name))
    assert result.form == "available_node_types"
    assert keys(result.warnings) == [
        *IGNORED_EVERYWHERE,
        "spec.configuration.available_node_types.worker_node.node_config.metadata.generateName",
        "spec.configuration.available_node_types.head_node.node_config.metadata.generateName",
    ]
    cluster = result.cluster
    (worker,) = cluster.worker_groups
    for template in (cluster.head.template, worker.template):
        assert template is not None
        assert "serviceAccountName" not in template["spec"]
        assert "command" not in template["spec"]["containers"][0]
    (service,) = cluster.services
    assert service.targets == ("head",)
    assert {p["port"] for p in service.spec["ports"]} == {10001, 8000, 8265}
    assert validate_with_ray(build_autoscaler_config(cluster)) is None


def test_status_names_every_ignored_key_and_the_translations() -> None:
    result = convert(data("ray-0.8-example-full.yaml"))
    ray = {"metadata": {"name": "legacy", "namespace": "ray", "uid": "u", "generation": 1},
           "spec": {"configuration": data("ray-0.8-example-full.yaml")}}
    from datetime import datetime, timezone

    from rayop.objects import Observed

    status = compute_status(ray, result, Observed(), datetime.now(timezone.utc), options=Options())
    (valid,) = [c for c in status["conditions"] if c["type"] == "ConfigurationValid"]
    assert valid["status"] == "True" and valid["reason"] == "KeysIgnored"
    head = valid["message"].split(":", 1)[0]
    for key in IGNORED_EVERYWHERE:
        assert key in head
    assert "translated from `ray up`" in valid["message"] and "keep-alive" in valid["message"]


# -- the env helpers -----------------------------------------------------------------------------------------------------


def test_container_env_and_expand() -> None:
    container = {
        "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-y"},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
            {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "GONE", "valueFrom": {"resourceFieldRef": {"resource": "requests.ephemeral-storage"}}},
        ],
    }
    env = container_env(container)
    assert env == {"A": "x", "B": "x-y", "CPU": "2", "MEM": "1024", "GONE": None}
    assert expand("$A:${B}", env) == "x:x-y"
    assert expand("$GONE", env) is None
    assert expand("`hostname`", env) is None


def test_a_stored_declared_service_shows_no_drift() -> None:
    """The API server fills in a cluster IP, the type, sessionAffinity and more: none of that is drift (a drift there
    would patch or re-create the Service on every reconcile)."""
    from rayop.plan import _drift

    result = convert(data("ray-1.x-kubernetes-defaults.yaml"))
    desired = build_children({"metadata": {"name": "legacy", "namespace": "ray", "uid": "u"}, "spec": {}},
                             result.cluster, Options(), programs={})
    (want,) = desired.services
    stored = {
        **want,
        "metadata": {**want["metadata"], "uid": "s", "resourceVersion": "1"},
        "spec": {**want["spec"], "clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"], "type": "ClusterIP",
                 "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "internalTrafficPolicy": "Cluster"},
    }
    assert _drift(want, stored) == ({}, False)
    edited = {**stored, "spec": {**stored["spec"], "selector": {"component": "other"}}}
    patch, recreate = _drift(want, edited)
    assert not recreate and patch["spec"]["selector"] == want["spec"]["selector"]
