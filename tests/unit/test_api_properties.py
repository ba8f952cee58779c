"""Property-based tests: whatever it is given, the conversion returns a valid model or raises ConfigurationError."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rayop.api.convert import effective_cluster
from rayop.api.model import ConfigurationError, Conversion
from rayop.api.types import MAX_NAME_PLUS_GROUP_LENGTH, NAME_LIMIT

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIG_KEYS = [
    "cluster_name",
    "min_workers",
    "max_workers",
    "initial_workers",
    "autoscaling_mode",
    "target_utilization_fraction",
    "idle_timeout_minutes",
    "upscaling_speed",
    "provider",
    "head_node",
    "worker_nodes",
    "available_node_types",
    "head_node_type",
    "docker",
    "auth",
    "file_mounts",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
    "initialization_commands",
    "cluster_synced_files",
    "worker_default_node_type",
]
NESTED_KEYS = [
    "type",
    "namespace",
    "use_internal_ips",
    "services",
    "apiVersion",
    "kind",
    "metadata",
    "spec",
    "labels",
    "generateName",
    "containers",
    "resources",
    "limits",
    "requests",
    "cpu",
    "memory",
    "nvidia.com/gpu",
    "image",
    "node_config",
    "min_workers",
    "max_workers",
    "idle_timeout_s",
    "CPU",
    "GPU",
    "head",
    "worker",
    "worker_node",
    "head_node",
    "image",
    "head_image",
]
SPEC_KEYS = [
    "minWorkers",
    "maxWorkers",
    "initialWorkers",
    "autoScalingMode",
    "targetUtilization",
    "idleTimeoutMinutes",
    "head",
    "worker",
    "configuration",
    "image",
    "headRayStartParams",
    "workerRayStartParams",
    "workerGroups",
    "desiredWorkers",
    "workersToDelete",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=12),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "default",
            "aggressive",
            "disabled",
            "kubernetes",
            "v1",
            "Pod",
            "1",
            "500m",
            "2Gi",
            "worker",
            "head",
            "ray start --head --num-cpus=2",
            "ray stop; ulimit -n 1",
            "--port=6380",
            '{"a": 1}',
        ]
    ),
    st.text(max_size=12),
)


def json_values(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6)), children, max_size=5),
        ),
        max_leaves=25,
    )


configurations = st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values(NESTED_KEYS + CONFIG_KEYS), max_size=10)
specs = st.dictionaries(
    st.sampled_from(SPEC_KEYS),
    st.one_of(
        json_values(NESTED_KEYS + SPEC_KEYS + ["name", "template", "rayStartParams"]),
        st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["a", "b", "gpu", "head", "Bad"])},
                optional={
                    "minWorkers": scalars,
                    "maxWorkers": scalars,
                    "initialWorkers": scalars,
                    "template": json_values(NESTED_KEYS),
                    "rayStartParams": json_values(NESTED_KEYS),
                },
            ),
            max_size=3,
        ),
    ),
    max_size=8,
)
names = st.one_of(st.sampled_from(["demo", "ray-sample", "x" * 50, "x" * 52]), st.text(max_size=60))


def check(result: Conversion) -> None:
    cluster = result.cluster
    seen = set()
    for group in cluster.worker_groups:
        assert 0 <= group.min_workers <= group.desired_workers <= group.max_workers
        assert group.name != "head" and group.name not in seen
        seen.add(group.name)
        assert len(cluster.name) + len(group.name) <= MAX_NAME_PLUS_GROUP_LENGTH
        assert len(f"{cluster.name}-{group.name}-abcde") <= NAME_LIMIT
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in group.ray_start_params.items())
    assert len(f"{cluster.name}-head-abcde") <= NAME_LIMIT
    assert cluster.autoscaling.max_workers <= sum(g.max_workers for g in cluster.worker_groups)
    for warning in result.warnings:
        assert warning.key and warning.message


def convert(obj: Any) -> None:
    try:
        result = effective_cluster(obj)
    except ConfigurationError as e:
        assert e.message
        event("rejected")
        return
    event("converted")
    check(result)


@SETTINGS
@given(configurations, st.sampled_from(["block", "flow"]))
def test_any_yaml_configuration(data: dict[str, Any], style: str) -> None:
    try:
        text = yaml.safe_dump(data, default_flow_style=(style == "flow"))
    except yaml.YAMLError:
        return
    convert({"metadata": {"name": "demo", "namespace": "ns"}, "spec": {"configuration": text}})


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_as_configuration(text: str) -> None:
    convert({"metadata": {"name": "demo"}, "spec": {"configuration": text}})


YAML_PIECES = [
    "min_workers: ",
    "max_workers: ",
    "initial_workers: ",
    "head_node:\n  ",
    "worker_nodes:\n  ",
    "provider:\n  ",
    "available_node_types:\n  ",
    "head_node_type: ",
    "spec: ",
    "containers:\n  - ",
    "resources: {limits: {cpu: ",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!!set ",
    "!!python/object:os.system ",
    "2020-13-45",
    "0x1F",
    ".inf",
    "~",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "\n",
    "  ",
    "'",
    '"',
    "#",
    "|\n  ",
    ">",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "\t",
    "\x00",
    "1",
    "-1",
    "2.5",
    "yes",
    "worker",
    "head",
    "ray start --head --num-cpus=$X",
    "ray stop; x",
]


@SETTINGS
@given(st.lists(st.sampled_from(YAML_PIECES), max_size=40))
def test_yaml_like_fragments(pieces: list[str]) -> None:
    convert({"metadata": {"name": "demo"}, "spec": {"configuration": "".join(pieces)}})


@SETTINGS
@given(specs, names)
def test_any_structured_spec(spec: dict[str, Any], name: str) -> None:
    convert({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})


@SETTINGS
@given(json_values(["metadata", "spec", "name", "namespace", "configuration", "minWorkers"]))
def test_any_json_object(obj: Any) -> None:
    convert(obj)


def test_alias_bomb_is_bounded() -> None:
    # 10**9 values once aliases are expanded: the conversion stops early instead of exhausting memory.
    bomb = (
        "\n".join(
            ["xa0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
            + [f"xa{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
        )
        + "\nhead_node:\n  spec:\n    bomb: *a8\n"
    )
    try:
        effective_cluster({"metadata": {"name": "demo"}, "spec": {"configuration": bomb}})
    except ConfigurationError as e:
        assert "too large" in e.message
    else:
        raise AssertionError("expected ConfigurationError")
