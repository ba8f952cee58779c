"""The conversion from either form of a `Ray` to the effective cluster model."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayop.api.convert import convert_spec, effective_cluster
from rayop.api.model import (
    AutoscalingSettings,
    ClusterModel,
    ConfigurationError,
    HeadGroup,
    RayResources,
    WorkerGroup,
)
from rayop.api.quantity import parse_quantity

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"


def load_sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return data


def ray(spec: dict[str, Any], name: str = "demo", namespace: str = "ns") -> dict[str, Any]:
    return {
        "apiVersion": "ray.k8s.io/v1alpha1",
        "kind": "Ray",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def config(text: str, **extra: Any) -> dict[str, Any]:
    return ray({"configuration": textwrap.dedent(text), **extra})


def keys(conversion: Any) -> list[str]:
    return [w.key for w in conversion.warnings]


NO_RESOURCES = RayResources()
EMPTY_HEAD = HeadGroup(template=None, image=None, ray_start_params={}, resources=NO_RESOURCES)


def worker(min_workers: int, max_workers: int, initial: int, **kw: Any) -> WorkerGroup:
    fields: dict[str, Any] = dict(
        name="worker",
        template=None,
        image=None,
        ray_start_params={},
        resources=NO_RESOURCES,
        min_workers=min_workers,
        max_workers=max_workers,
        desired_workers=initial,
        initial_workers=initial,
    )
    fields.update(kw)
    return WorkerGroup(**fields)


# -- the seed's two examples ----------------------------------------------------------------------------------------


def test_seed_configuration_example() -> None:
    result = effective_cluster(load_sample("seed-configuration.yaml"))
    assert result.form == "legacy"
    assert result.cluster == ClusterModel(
        name="ray-sample",
        namespace="ray",
        head=EMPTY_HEAD,
        worker_groups=(worker(0, 2, 0),),
        autoscaling=AutoscalingSettings(enabled=True, upscaling_speed=1.0, idle_timeout_minutes=5.0, max_workers=2),
    )
    # cluster_name 'default' is not the Ray's name: reported, not silently dropped.
    assert keys(result) == ["spec.configuration.cluster_name"]


def test_seed_structured_example() -> None:
    result = effective_cluster(load_sample("seed-structured.yaml"))
    assert result.form == "structured"
    assert result.cluster == ClusterModel(
        name="ray-sample",
        namespace="ray",
        head=EMPTY_HEAD,
        worker_groups=(worker(1, 2, 1),),
        autoscaling=AutoscalingSettings(enabled=True, upscaling_speed=0.25, idle_timeout_minutes=60.0, max_workers=2),
    )
    assert result.warnings == ()


def test_seed_examples_agree_with_their_structured_twin() -> None:
    structured = effective_cluster(ray({"minWorkers": 0, "maxWorkers": 2}, name="ray-sample", namespace="ray"))
    from_config = effective_cluster(load_sample("seed-configuration.yaml"))
    assert structured.cluster == from_config.cluster


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.yaml")))
def test_every_sample_converts(sample: str) -> None:
    result = effective_cluster(load_sample(sample))
    assert result.cluster.worker_groups
    for group in result.cluster.worker_groups:
        assert group.min_workers <= group.desired_workers <= group.max_workers


# -- legacy format == available_node_types format -------------------------------------------------------------------

POD = """
    apiVersion: v1
    kind: Pod
    metadata:
        labels: {{component: {component}}}
    spec:
        containers:
        - name: ray-node
          image: rayproject/ray:2.60.0
          resources:
              limits: {{cpu: {cpu}, memory: 2Gi}}
"""


def pod(component: str, cpu: int, indent: int) -> str:
    return textwrap.indent(textwrap.dedent(POD.format(component=component, cpu=cpu)).strip(), " " * indent)


LEGACY = f"""\
cluster_name: demo
min_workers: 1
max_workers: 3
initial_workers: 1
autoscaling_mode: default
target_utilization_fraction: 0.8
idle_timeout_minutes: 7
provider:
    type: kubernetes
    namespace: ns
    use_internal_ips: true
head_node:
{pod("head", 2, 4)}
worker_nodes:
{pod("worker", 4, 4)}
setup_commands: [pip install requests]
head_start_ray_commands:
    - ray stop
    - ray start --head --port=6379 --object-manager-port=8076 --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands:
    - ray stop
    - ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076
"""

NODE_TYPES = f"""\
cluster_name: demo
max_workers: 3
upscaling_speed: 0.25
idle_timeout_minutes: 7
provider:
    type: kubernetes
    namespace: ns
head_node_type: head
available_node_types:
    head:
        node_config:
{pod("head", 2, 12)}
    worker:
        min_workers: 1
        max_workers: 3
        node_config:
{pod("worker", 4, 12)}
setup_commands: [pip install requests]
head_start_ray_commands:
    - ray start --head --object-manager-port=8076
worker_start_ray_commands:
    - ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076
"""


def test_legacy_and_node_types_formats_give_the_same_model() -> None:
    legacy = effective_cluster(ray({"configuration": LEGACY}))
    node_types = effective_cluster(ray({"configuration": NODE_TYPES}))
    assert legacy.form == "legacy" and node_types.form == "available_node_types"
    assert legacy.warnings == () and node_types.warnings == ()
    assert legacy.cluster == node_types.cluster
    cluster = legacy.cluster
    assert cluster.head.resources == RayResources(cpu=2, memory=2 * 2**30)
    assert cluster.head.template == {
        "metadata": {"labels": {"component": "head"}},
        "spec": {
            "containers": [
                {
                    "name": "ray-node",
                    "image": "rayproject/ray:2.60.0",
                    "resources": {"limits": {"cpu": 2, "memory": "2Gi"}},
                }
            ]
        },
    }
    (group,) = cluster.worker_groups
    assert (group.name, group.min_workers, group.max_workers, group.desired_workers) == ("worker", 1, 3, 1)
    assert group.ray_start_params == {"object-manager-port": "8076"}
    assert group.setup_commands == ("pip install requests",)
    assert cluster.autoscaling == AutoscalingSettings(
        enabled=True, upscaling_speed=0.25, idle_timeout_minutes=7.0, max_workers=3
    )


def test_structured_twin_of_legacy_matches_except_templates() -> None:
    structured = effective_cluster(
        ray({"minWorkers": 1, "maxWorkers": 3, "initialWorkers": 1, "targetUtilization": 80, "idleTimeoutMinutes": 7})
    )
    legacy = effective_cluster(ray({"configuration": LEGACY}))
    assert structured.cluster.autoscaling == legacy.cluster.autoscaling
    s, c = structured.cluster.worker_groups[0], legacy.cluster.worker_groups[0]
    assert (s.min_workers, s.max_workers, s.desired_workers) == (c.min_workers, c.max_workers, c.desired_workers)


# -- knobs ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, enabled, speed",
    [
        ({"maxWorkers": 2}, True, 1.0),
        ({"maxWorkers": 2, "autoScalingMode": "aggressive"}, True, 99999.0),
        ({"maxWorkers": 2, "targetUtilization": 50}, True, 1.0),
        ({"maxWorkers": 2, "targetUtilization": 100}, True, 0.0),
        ({"maxWorkers": 2, "targetUtilization": 80}, True, 0.25),
        ({"maxWorkers": 2, "autoScalingMode": "disabled"}, False, 1.0),
        ({"minWorkers": 2, "maxWorkers": 2}, False, 1.0),  # nothing to scale
        ({}, False, 1.0),
    ],
    ids=["default", "aggressive", "util50", "util100", "util80", "disabled", "fixed", "empty"],
)
def test_structured_autoscaling_knobs(spec: dict[str, Any], enabled: bool, speed: float) -> None:
    settings = effective_cluster(ray(spec)).cluster.autoscaling
    assert (settings.enabled, settings.upscaling_speed) == (enabled, speed)


@pytest.mark.parametrize(
    "text, speed, warned",
    [
        ("autoscaling_mode: aggressive\nmax_workers: 2", 99999.0, []),
        ("target_utilization_fraction: 0.5\nmax_workers: 2", 1.0, []),
        (
            "upscaling_speed: 3\nautoscaling_mode: aggressive\nmax_workers: 2",
            3.0,
            ["spec.configuration.autoscaling_mode"],
        ),
        (
            "autoscaling_mode: aggressive\ntarget_utilization_fraction: 0.5\nmax_workers: 2",
            99999.0,
            ["spec.configuration.target_utilization_fraction"],
        ),
    ],
)
def test_configuration_autoscaling_knobs(text: str, speed: float, warned: list[str]) -> None:
    result = effective_cluster(config(text))
    assert result.cluster.autoscaling.upscaling_speed == speed
    assert keys(result) == warned


def test_defaults_of_counts() -> None:
    (g,) = effective_cluster(ray({"initialWorkers": 3})).cluster.worker_groups
    assert (g.min_workers, g.desired_workers, g.max_workers) == (0, 3, 3)
    (g,) = effective_cluster(ray({"minWorkers": 2})).cluster.worker_groups
    assert (g.min_workers, g.desired_workers, g.max_workers) == (2, 2, 2)


def test_disabled_mode_warns_about_knobs_without_effect() -> None:
    result = effective_cluster(ray({"autoScalingMode": "disabled", "targetUtilization": 50, "idleTimeoutMinutes": 1}))
    assert keys(result) == ["spec.targetUtilization", "spec.idleTimeoutMinutes"]


# -- autoscaler-owned fields ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wanted, expected", [(None, 1), (0, 1), (3, 3), (10, 4)])
def test_desired_workers_is_clamped(wanted: int | None, expected: int) -> None:
    spec: dict[str, Any] = {"minWorkers": 1, "maxWorkers": 4, "initialWorkers": 2 if wanted is None else 1}
    if wanted is not None:
        spec["desiredWorkers"] = {"worker": wanted}
    expected = 2 if wanted is None else expected
    (g,) = effective_cluster(ray(spec)).cluster.worker_groups
    assert g.desired_workers == expected


def test_desired_workers_and_workers_to_delete_work_with_configuration() -> None:
    result = effective_cluster(
        config("max_workers: 5", desiredWorkers={"worker": 4, "gone": 1}, workersToDelete=["demo-worker-abcde"])
    )
    assert result.cluster.worker_groups[0].desired_workers == 4
    assert result.cluster.workers_to_delete == ("demo-worker-abcde",)
    assert keys(result) == ["spec.desiredWorkers.gone"]


# -- worker groups ----------------------------------------------------------------------------------------------------


def test_worker_groups_and_resources() -> None:
    result = effective_cluster(load_sample("worker-groups.yaml"))
    small, highmem = result.cluster.worker_groups
    assert small.name == "small" and small.resources == RayResources(cpu=2, memory=4 * 2**30)
    assert highmem.resources.custom == {"highmem": 1}
    assert highmem.image == "rayproject/ray:2.60.0"  # from spec.image, the template names none
    assert result.cluster.head.resources.cpu == 0  # num-cpus 0 beats the container limit
    assert result.cluster.autoscaling.max_workers == 24


def test_gpu_group_resources() -> None:
    cpu, gpu = effective_cluster(load_sample("gpu.yaml")).cluster.worker_groups
    assert gpu.resources == RayResources(cpu=8, gpu=1, memory=32 * 2**30)
    assert cpu.resources.gpu is None


def test_resources_from_requests_and_rounding() -> None:
    template = {
        "spec": {"containers": [{"resources": {"requests": {"cpu": "500m", "memory": "1.5Gi", "google.com/tpu": 4}}}]}
    }
    (g,) = effective_cluster(
        ray({"worker": template, "workerRayStartParams": {"resources": '"{\\"x\\": 2}"'}})
    ).cluster.worker_groups
    assert g.resources == RayResources(cpu=1, memory=3 * 2**29, custom={"TPU": 4.0, "x": 2})


def test_node_types_rename_and_custom_resources() -> None:
    result = effective_cluster(load_sample("node-types-configuration.yaml"))
    names = [g.name for g in result.cluster.worker_groups]
    assert names == ["cpu-worker", "gpu-worker"]
    gpu = result.cluster.group("gpu-worker")
    assert gpu is not None
    assert gpu.resources == RayResources(cpu=8, gpu=1, memory=32 * 2**30, custom={"accelerator_type_T4": 1})
    assert result.cluster.head.resources.cpu == 0


def test_template_is_a_copy() -> None:
    template = {"spec": {"containers": [{"name": "c", "image": "img"}]}}
    result = effective_cluster(ray({"head": template}))
    assert result.cluster.head.template == template
    assert result.cluster.head.template is not template
    assert result.cluster.head.template["spec"] is not template["spec"]  # type: ignore[index]
    assert result.cluster.head.image == "img"


# -- warnings: every key honoured or reported -----------------------------------------------------------------------


def test_ignored_keys_are_reported_with_reasons() -> None:
    text = """\
    cluster_name: demo
    max_workers: 1
    docker: {image: "rayproject/ray:2.60.0", container_name: ray, run_options: [--ulimit nofile=65536]}
    auth: {ssh_user: ubuntu}
    file_mounts: {"/data": "/local"}
    file_mounts_sync_continuously: true
    cluster_synced_files: []
    initialization_commands: [echo hi]
    provider:
        type: kubernetes
        namespace: elsewhere
        use_internal_ips: false
        autoscaler_service_account: {apiVersion: v1, kind: ServiceAccount}
        services: [{apiVersion: v1, kind: Service}]
        shiny: 1
    head_node:
        apiVersion: v1
        kind: Pod
        metadata: {generateName: ray-head-, ownerReferences: []}
        status: {}
    head_start_ray_commands:
        - ulimit -n 65536; ray start --head --num-cpus=$MY_CPU_REQUEST --port=6380 --temp-dir=/tmp/ray
    worker_start_ray_commands: ["ray start --address=$RAY_HEAD_IP:6379 --head"]
    something_else: true
    """
    result = effective_cluster(config(text))
    assert sorted(keys(result)) == sorted(
        [
            "spec.configuration.provider.namespace",
            "spec.configuration.provider.use_internal_ips",
            "spec.configuration.provider.autoscaler_service_account",
            "spec.configuration.provider.services[0].metadata.name",  # a Service without a name
            "spec.configuration.provider.shiny",
            "spec.configuration.docker.container_name",
            "spec.configuration.docker.run_options",
            "spec.configuration.file_mounts",
            "spec.configuration.file_mounts_sync_continuously",
            "spec.configuration.auth",
            "spec.configuration.initialization_commands",
            "spec.configuration.head_node.metadata.generateName",
            "spec.configuration.head_node.metadata.ownerReferences",
            "spec.configuration.head_node.status",
            "spec.configuration.head_start_ray_commands[0]",  # $MY_CPU_REQUEST (no env in the template)
            "spec.configuration.head_start_ray_commands[0]",  # --port=6380
            "spec.configuration.worker_start_ray_commands[0]",  # --head on a worker
            "spec.configuration.something_else",
        ]
    )
    assert all(w.message for w in result.warnings)
    assert result.cluster.head.image == "rayproject/ray:2.60.0"  # docker.image honoured as the default image
    assert result.cluster.head.ray_start_params == {"temp-dir": "/tmp/ray"}
    # `ulimit` runs before `ray start`, as under `ray up` (where `;` went on whatever it exited with).
    assert result.cluster.head.setup_commands == ("{ ulimit -n 65536; true; }",)


def test_node_types_format_reports_legacy_keys() -> None:
    text = """\
    min_workers: 1
    initial_workers: 1
    head_node: {kind: Pod}
    head_node_type: h
    worker_default_node_type: w
    available_node_types:
        h: {min_workers: 1, resources: {CPU: 1}, worker_setup_commands: [x]}
        w: {max_workers: 2, docker: {image: x}, labels: {a: b}, idle_timeout_s: 30, mystery: 1}
    """
    result = effective_cluster(config(text))
    assert sorted(keys(result)) == sorted(
        [
            "spec.configuration.min_workers",
            "spec.configuration.initial_workers",
            "spec.configuration.head_node",
            "spec.configuration.worker_default_node_type",
            "spec.configuration.available_node_types.h.min_workers",
            "spec.configuration.available_node_types.h.worker_setup_commands",
            "spec.configuration.available_node_types.w.docker",
            "spec.configuration.available_node_types.w.labels",
            "spec.configuration.available_node_types.w.mystery",
        ]
    )
    (w,) = result.cluster.worker_groups
    assert w.idle_timeout_seconds == 30.0 and w.max_workers == 2


# -- errors ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, column",
    [
        ("min_workers: 0\nmax_workers: [1\n", 3, 1),
        ("a: 1\n  b: 2\n", 2, 4),
        ("min_workers: 1\nmin_workers: 2\n", 2, 1),
        ('key: "unterminated\n', 2, 1),
        ("\tmin_workers: 1\n", 1, 1),
    ],
    ids=["unclosed-flow", "bad-indent", "duplicate-key", "unterminated-quote", "tab"],
)
def test_malformed_yaml_names_line_and_column(text: str, line: int, column: int) -> None:
    with pytest.raises(ConfigurationError) as e:
        effective_cluster(ray({"configuration": text}))
    assert e.value.field == "spec.configuration"
    assert (e.value.line, e.value.column) == (line, column)
    assert f"line {line}, column {column}" in str(e.value)


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"minWorkers": 3, "maxWorkers": 2}, "spec.minWorkers"),
        ({"minWorkers": 1, "initialWorkers": 0}, "spec.initialWorkers"),
        ({"maxWorkers": 1, "initialWorkers": 2}, "spec.initialWorkers"),
        ({"minWorkers": -1}, "spec.minWorkers"),
        ({"targetUtilization": 0}, "spec.targetUtilization"),
        ({"autoScalingMode": "fast"}, "spec.autoScalingMode"),
        ({"configuration": "max_workers: 1", "minWorkers": 1}, "spec.minWorkers"),
        ({"configuration": "max_workers: 1", "head": {}}, "spec.head"),
        ({"workerGroups": [], "worker": {}}, "spec.worker"),
        ({"workerGroups": [{"name": "head"}]}, "spec.workerGroups[0].name"),
        ({"workerGroups": [{"name": "g", "minWorkers": 2, "maxWorkers": 1}]}, "spec.workerGroups[0].minWorkers"),
        ({"headRayStartParams": {"address": "x"}}, "spec.headRayStartParams.address"),
        ({"workerRayStartParams": {"--block": ""}}, "spec.workerRayStartParams.--block"),
        ({"workerRayStartParams": {"num-cpus": "lots"}}, "spec.workerRayStartParams.num-cpus"),
        ({"workerRayStartParams": {"resources": "[1]"}}, "spec.workerRayStartParams.resources"),
        (
            {"worker": {"spec": {"containers": [{"resources": {"limits": {"cpu": "two"}}}]}}},
            "spec.worker.spec.containers[0].resources.limits.cpu",
        ),
        ({"configuration": "min_workers: 3\nmax_workers: 2"}, "spec.configuration.min_workers"),
        ({"configuration": "max_workers: 1\ninitial_workers: 2"}, "spec.configuration.initial_workers"),
        ({"configuration": "min_workers: -1"}, "spec.configuration.min_workers"),
        ({"configuration": "autoscaling_mode: fast"}, "spec.configuration.autoscaling_mode"),
        ({"configuration": "target_utilization_fraction: 0"}, "spec.configuration.target_utilization_fraction"),
        ({"configuration": "available_node_types: {w: {}}"}, "spec.configuration.head_node_type"),
        ({"configuration": "head_node_type: x\navailable_node_types: {w: {}}"}, "spec.configuration.head_node_type"),
        (
            {"configuration": "head_node_type: h\navailable_node_types: {h: {}, head: {}}"},
            "spec.configuration.available_node_types.head",
        ),
        (
            {"configuration": "head_node_type: h\navailable_node_types: {h: {}, a_b: {}, a-b: {}}"},
            "spec.configuration.available_node_types.a-b",
        ),
        ({"configuration": "head_node: {kind: Deployment}"}, "spec.configuration.head_node.kind"),
        ({"configuration": "head_node: {spec: {x: 2020-01-01}}"}, "spec.configuration.head_node.spec.x"),
        ({"configuration": ""}, "spec.configuration"),
        ({"configuration": "- a list"}, "spec.configuration"),
    ],
)
def test_invalid_objects_raise_configuration_error_naming_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        effective_cluster(ray(spec))
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize(
    "name, spec",
    [
        ("x" * 53, {"workerGroups": []}),
        ("x" * 51, {}),  # <name>-worker-<5> would be 64 characters
        ("x" * 45, {"workerGroups": [{"name": "g" * 12}]}),
        ("9lives", {}),
        ("has.dot", {}),
        ("x" * 45, {"configuration": "head_node_type: h\navailable_node_types: {h: {}, long_worker_name: {}}"}),
    ],
)
def test_names_that_make_child_names_too_long_are_rejected(name: str, spec: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        effective_cluster(ray(spec, name=name))


def test_longest_names_that_fit() -> None:
    effective_cluster(ray({"workerGroups": [{"name": "g"}]}, name="x" * 52))
    effective_cluster(ray({}, name="x" * 50))


def test_convert_spec_without_object() -> None:
    result = convert_spec({"maxWorkers": 1}, name="demo")
    assert result.cluster.namespace == ""


@pytest.mark.parametrize(
    "text, value",
    [("1", 1), ("500m", 0.5), ("2Gi", 2 * 2**30), ("1.5k", 1500), ("1e3", 1000), ("+2", 2), (".5", 0.5), (3, 3)],
)
def test_quantities(text: Any, value: float) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "1.2.3", "2 Gi", "1Gb", "abc", "1e99", None, True])
def test_bad_quantities(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


@pytest.mark.parametrize(
    "spec, expected",
    [
        # The seed's sample after `kubectl patch ... {"spec":{"minWorkers":2,"maxWorkers":3}}`.
        ({"minWorkers": 2, "maxWorkers": 3, "initialWorkers": 1}, (2, 3, 2)),
        ({"minWorkers": 0, "maxWorkers": 1, "initialWorkers": 3}, (0, 1, 1)),
        ({"minWorkers": 2, "maxWorkers": 3, "initialWorkers": 1, "desiredWorkers": {"worker": 5}}, (2, 3, 3)),
        ({"configuration": "min_workers: 2\nmax_workers: 4\ninitial_workers: 1"}, (2, 4, 2)),
        ({"workerGroups": [{"name": "g", "minWorkers": 3, "maxWorkers": 5, "initialWorkers": 1}]}, (3, 5, 3)),
    ],
)
def test_after_an_update_the_bounds_clamp_the_initial_count(spec: dict[str, Any],
                                                            expected: tuple[int, int, int]) -> None:
    created = ray(spec)
    created["metadata"]["generation"] = 1
    with pytest.raises(ConfigurationError) as e:
        effective_cluster(created)
    assert e.value.field is not None and e.value.field.endswith(("initialWorkers", "initial_workers"))
    updated = ray(spec)
    updated["metadata"]["generation"] = 2
    (g,) = effective_cluster(updated).cluster.worker_groups
    assert (g.min_workers, g.max_workers, g.desired_workers) == expected
    # The model keeps what was asked, so the clamp can be reported with both numbers.
    assert g.initial_workers == (spec.get("initialWorkers") or (spec.get("workerGroups") or [{}])[0].get(
        "initialWorkers") or 1)
