"""The `configuration` form of a `Ray`: a Ray cluster-launcher (`ray up`) YAML as the head, the worker groups, the
autoscaling settings and the declared Services of the model.

Guarantees:
- Both layouts are accepted: the legacy Kubernetes one of Ray 0.8/1.x (`head_node`/`worker_nodes`, `min_workers`,
  `max_workers`, `initial_workers`) and `available_node_types` (one worker group per node type). Every key is
  honoured or reported in `warnings`; what is honoured differently from `ray up` is in `notes`.
- A configuration runs as `ray up` ran it: the start commands (`rayop.api.configstart`), the pod manifests
  (`rayop.api.configpods`) and `provider.services` (`rayop.api.configservices`) each say how.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rayop.api.configpods import config_pod
from rayop.api.configservices import declared_services
from rayop.api.configstart import Start, resolve_params, start_params
from rayop.api.configyaml import CONFIG_PATH, Context, Section, parse_configuration
from rayop.api.groups import CONFIG_NAMES, FormResult, bounds, head_group, upscaling_speed, worker_group
from rayop.api.model import (DEFAULT_IDLE_TIMEOUT_MINUTES, AutoscalingSettings, ConfigurationError, ConfigWarning,
                             HeadGroup, WorkerGroup)
from rayop.api.modelcheck import Budget, check_group_name, short
from rayop.api.types import (
    DEFAULT_WORKER_GROUP,
    HEAD_GROUP,
    MAX_WORKER_GROUPS,
    MODE_AGGRESSIVE,
    MODE_DEFAULT,
    MODE_DISABLED,
    SCALING_MODES,
)

__all__ = ["from_configuration"]

_UNKNOWN = "not a Ray cluster-launcher key; ignored"
_NO_SSH = (
    "the operator does not SSH into nodes or sync files; put files in the image or mount volumes in the pod template"
)
_OPERATOR_RBAC = (
    "ignored: the operator creates the autoscaler's ServiceAccount, Role and RoleBinding (<name>-autoscaler) itself, "
    "with the least rights Ray's autoscaler needs; pods that name this account run as the operator's instead"
)
# Top-level keys of `ray up` that mean nothing for pods the operator runs, and why.
_IGNORED_KEYS = (
    *(
        (key, f"ignored: {_NO_SSH}")
        for key in (
            "file_mounts",
            "cluster_synced_files",
            "file_mounts_sync_continuously",
            "rsync_exclude",
            "rsync_filter",
            "auth",
        )
    ),
    ("initialization_commands", "ignored: there is no host to run them on; pods start from their image"),
    ("no_restart", "ignored: it is set by `ray up --no-restart`, not by users"),
    ("worker_default_node_type", "ignored: deprecated by Ray; worker types are chosen by demand"),
)
_RESOURCE_PARAMS = {
    "CPU": "num-cpus",
    "GPU": "num-gpus",
    "memory": "memory",
    "object_store_memory": "object-store-memory",
}


@dataclass
class _Images:
    head: str | None = None
    worker: str | None = None


@dataclass
class _Commands:
    """The commands of a configuration, as the operator runs them."""

    head_start: Start
    worker_start: Start
    # setup_commands: run on every node, first.
    setup: list[str]
    # head_setup_commands, then the shell commands before the head's `ray start`.
    head_setup: list[str]
    # worker_setup_commands (a node type may give its own instead).
    worker_setup: list[str]

    def head(self) -> list[str]:
        return self.setup + self.head_setup + self.head_start.shell

    def worker(self, own: list[str] | None = None) -> list[str]:
        return self.setup + (self.worker_setup if own is None else own) + self.worker_start.shell


def from_configuration(
    text: str,
    *,
    name: str,
    namespace: str,
    image: str | None,
    warnings: list[ConfigWarning],
    notes: list[ConfigWarning],
    budget: Budget,
) -> FormResult:
    """The head, the worker groups, the autoscaling settings and the Services a configuration describes."""
    config = Section(parse_configuration(text), CONFIG_PATH, warnings)
    ctx = Context(name=name, warnings=warnings, notes=notes, budget=budget)
    cluster_name = config.get("cluster_name")
    if cluster_name is not None and cluster_name != name:
        config.warn(
            "cluster_name",
            f"ignored: the cluster is named after the Ray object ({short(name)}); pods, Services and the autoscaler use "
            "that name",
        )
    provider = config.section("provider")
    raw_services = _provider(provider, namespace, ctx)
    images = _docker(config.section("docker"), image)
    for key, why in _IGNORED_KEYS:
        config.ignore(key, why)
    commands = _commands(config, ctx)
    settings, max_workers = _autoscaling(config)
    if config.has("available_node_types"):
        form = "available_node_types"
        head, groups = _node_types(config, ctx=ctx, images=images, commands=commands, max_workers=max_workers)
    else:
        form = "legacy"
        head, groups = _legacy(config, ctx=ctx, images=images, commands=commands, max_workers=max_workers)
    config.report_unknown(_UNKNOWN)
    services = declared_services(raw_services, provider.key_path("services"), head, groups, ctx)
    return FormResult(head=head, groups=groups, autoscaling=settings, form=form, services=services)


def _commands(config: Section, ctx: Context) -> _Commands:
    head_start = start_params(
        config.commands("head_start_ray_commands"), config.key_path("head_start_ray_commands"), head=True, ctx=ctx
    )
    worker_start = start_params(
        config.commands("worker_start_ray_commands"), config.key_path("worker_start_ray_commands"), head=False, ctx=ctx
    )
    return _Commands(
        head_start=head_start,
        worker_start=worker_start,
        setup=config.commands("setup_commands"),
        head_setup=config.commands("head_setup_commands"),
        worker_setup=config.commands("worker_setup_commands"),
    )


def _autoscaling(config: Section) -> tuple[AutoscalingSettings, int | None]:
    """The knobs both layouts share: the settings, and the cluster-wide max_workers when it is given."""
    mode = config.string("autoscaling_mode")
    if mode is not None and mode not in SCALING_MODES:
        raise ConfigurationError(
            f"unsupported value {short(mode)}: must be one of {', '.join(SCALING_MODES)}",
            field=config.key_path("autoscaling_mode"),
        )
    mode = mode or MODE_DEFAULT
    fraction = config.number("target_utilization_fraction", 0.0, 1.0, exclusive_minimum=True)
    speed = config.number("upscaling_speed")
    if speed is not None:
        if mode == MODE_AGGRESSIVE:
            config.warn("autoscaling_mode", "'aggressive' ignored: upscaling_speed is set and takes precedence")
        if fraction is not None:
            config.warn("target_utilization_fraction", "ignored: upscaling_speed is set and takes precedence")
    elif mode == MODE_AGGRESSIVE and fraction is not None:
        config.warn("target_utilization_fraction", "ignored with autoscaling_mode 'aggressive'")
    idle = config.number("idle_timeout_minutes")
    max_workers = config.integer("max_workers")
    settings = AutoscalingSettings(
        enabled=mode != MODE_DISABLED,
        upscaling_speed=speed if speed is not None else upscaling_speed(mode, fraction),
        idle_timeout_minutes=idle if idle is not None else DEFAULT_IDLE_TIMEOUT_MINUTES,
        max_workers=-1 if max_workers is None else max_workers,
    )
    return settings, max_workers


def _provider(provider: Section, namespace: str, ctx: Context) -> object:
    """Check the provider section; remember the ServiceAccounts it declares; return `services` (checked later)."""
    kind = provider.get("type")
    if kind is not None and kind != "kubernetes":
        provider.warn("type", f"{short(kind)} ignored: the operator itself provides the Ray nodes as pods")
    ns = provider.get("namespace")
    if ns is not None and ns != namespace:
        provider.warn("namespace", f"{short(ns)} ignored: the cluster runs in the Ray object's namespace ({short(namespace)})")
    internal = provider.get("use_internal_ips")
    if internal is not None and internal is not True:
        provider.warn("use_internal_ips", "ignored: Ray nodes always use their pod IPs")
    ctx.accounts.update(_declared_accounts(provider.get("autoscaler_service_account"),
                                           provider.get("autoscaler_role_binding")))
    for key in ("autoscaler_service_account", "autoscaler_role", "autoscaler_role_binding"):
        provider.ignore(key, _OPERATOR_RBAC)
    services = provider.get("services")
    provider.report_unknown("not a Kubernetes provider key; ignored")
    return services


def _declared_accounts(account: object, binding: object) -> list[str]:
    """The ServiceAccounts the provider asks `ray up` to create: its autoscaler account, its binding's subjects."""
    names: list[str] = []
    if isinstance(account, Mapping):
        meta = account.get("metadata")
        if isinstance(meta, Mapping) and isinstance(meta.get("name"), str):
            names.append(meta["name"])
    subjects = binding.get("subjects") if isinstance(binding, Mapping) else None
    for subject in subjects if isinstance(subjects, list) else ():
        if isinstance(subject, Mapping) and subject.get("kind") == "ServiceAccount" and isinstance(
            subject.get("name"), str
        ):
            names.append(subject["name"])
    return names


def _docker(docker: Section, default: str | None) -> _Images:
    image = docker.string("image")
    head = docker.string("head_image")
    worker = docker.string("worker_image")
    for key in list(docker.data):
        if key not in docker.seen:
            docker.ignore(
                key, "ignored: pods already run in containers; only docker.image, head_image and worker_image are used"
            )
    return _Images(head=head or image or default, worker=worker or image or default)


# -- the legacy layout ------------------------------------------------------------------------------------------------


def _legacy(
    config: Section, *, ctx: Context, images: _Images, commands: _Commands, max_workers: int | None
) -> tuple[HeadGroup, list[WorkerGroup]]:
    """`head_node` and `worker_nodes`: the head and the one `worker` group (Ray 0.8 to 1.x)."""
    if config.has("head_node_type"):
        config.warn("head_node_type", "ignored: it only has a meaning together with available_node_types")
    head_template = config_pod(config.get("head_node"), config.key_path("head_node"), head=True, ctx=ctx)
    head = head_group(
        head_template,
        images.head,
        resolve_params(commands.head_start, head_template, True, ctx),
        (config.key_path("head_start_ray_commands"), config.key_path("head_node")),
        commands.head(),
    )
    check_group_name(ctx.name, DEFAULT_WORKER_GROUP, "metadata.name")
    worker_template = config_pod(config.get("worker_nodes"), config.key_path("worker_nodes"), head=False, ctx=ctx)
    worker_params = resolve_params(commands.worker_start, worker_template, False, ctx)
    counts = bounds(
        config.integer("min_workers"), max_workers, config.integer("initial_workers"), f"{CONFIG_PATH}.", CONFIG_NAMES
    )
    group = worker_group(
        DEFAULT_WORKER_GROUP,
        worker_template,
        images.worker,
        worker_params,
        (config.key_path("worker_start_ray_commands"), config.key_path("worker_nodes")),
        counts,
        commands.worker(),
    )
    return head, [group]


# -- the available_node_types layout ----------------------------------------------------------------------------------


def _node_types(
    config: Section, *, ctx: Context, images: _Images, commands: _Commands, max_workers: int | None
) -> tuple[HeadGroup, list[WorkerGroup]]:
    """`available_node_types`: the head's node type (`head_node_type`) and one worker group per other type."""
    for key in ("head_node", "worker_nodes"):
        config.ignore(key, "ignored: available_node_types is set; put the pod manifest in a node type's node_config")
    for key in ("min_workers", "initial_workers"):
        config.ignore(key, "ignored: with available_node_types, set min_workers on each node type")
    types = config.section("available_node_types")
    head_type = _head_type(config, types)
    head: HeadGroup | None = None
    groups: list[WorkerGroup] = []
    names: dict[str, str] = {}
    for type_name in types.data:
        node = types.section(type_name)
        is_head = type_name == head_type
        template = config_pod(node.get("node_config"), node.key_path("node_config"), head=is_head, ctx=ctx)
        node.ignore("docker", "ignored: pods already run in containers; set the image in node_config")
        node.ignore("labels", "ignored: Ray node labels are not supported yet; use custom resources")
        type_params = _type_resources(node, "resources")
        if is_head:
            head = _head_node_type(node, template, type_params, images, commands, ctx)
        else:
            group = _worker_group_name(type_name, types.key_path(type_name), names, len(groups), ctx)
            groups.append(_worker_node_type(node, group, template, type_params, images, commands, max_workers, ctx))
        node.report_unknown("not a node type key; ignored")
    if head is None:  # unreachable: head_type is one of the types
        raise ConfigurationError("is not one of available_node_types", field=config.key_path("head_node_type"))
    return head, groups


def _head_type(config: Section, types: Section) -> str:
    head_type = config.string("head_node_type")
    if head_type is None:
        raise ConfigurationError("is required with available_node_types", field=config.key_path("head_node_type"))
    if head_type not in types.data:
        raise ConfigurationError(
            f"{short(head_type)} is not one of available_node_types", field=config.key_path("head_node_type")
        )
    return head_type


def _type_resources(section: Section, key: str) -> dict[str, str]:
    """A node type's `resources` as ray start params (num-cpus, num-gpus, memory, resources JSON)."""
    value = section.get(key)
    if value is None:
        return {}
    resources = Section(value, section.key_path(key), section.warnings)
    params: dict[str, str] = {}
    custom: dict[str, float] = {}
    for name in resources.data:
        amount = resources.number(name)
        if amount is None:
            raise ConfigurationError("must be a number", field=resources.key_path(name))
        if name in _RESOURCE_PARAMS:
            if not amount.is_integer():
                raise ConfigurationError("must be a whole number", field=resources.key_path(name))
            params[_RESOURCE_PARAMS[name]] = str(int(amount))
        else:
            custom[name] = int(amount) if amount.is_integer() else amount
    if custom:
        params["resources"] = json.dumps(custom, sort_keys=True)
    return params


def _head_node_type(
    node: Section,
    template: dict[str, Any] | None,
    type_params: dict[str, str],
    images: _Images,
    commands: _Commands,
    ctx: Context,
) -> HeadGroup:
    for key in ("min_workers", "max_workers"):
        value = node.integer(key)
        if value:
            node.warn(key, "ignored: there is always exactly one head")
    node.ignore("worker_setup_commands", "ignored: it applies to worker node types only")
    node.ignore("idle_timeout_s", "ignored: the head is never removed")
    params = {**resolve_params(commands.head_start, template, True, ctx), **type_params}
    paths = (node.key_path("resources"), node.key_path("node_config"))
    return head_group(template, images.head, params, paths, commands.head())


def _group_name(type_name: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", type_name.lower())).strip("-")


def _worker_group_name(type_name: str, where: str, names: dict[str, str], count: int, ctx: Context) -> str:
    """The worker group a node type becomes, checked against the `count` groups so far (`names`: their types)."""
    group = _group_name(type_name)
    if group in names:
        raise ConfigurationError(
            f"node types {short(names[group])} and {short(type_name)} both become worker group {short(group)}",
            field=where,
        )
    if not group:
        raise ConfigurationError("a worker node type needs a name with letters or digits", field=where)
    if group == HEAD_GROUP:
        raise ConfigurationError("'head' is reserved for the head; rename this worker node type", field=where)
    names[group] = type_name
    check_group_name(ctx.name, group, where)
    if count >= MAX_WORKER_GROUPS:
        raise ConfigurationError(f"at most {MAX_WORKER_GROUPS} worker node types are supported", field=where)
    return group


def _worker_node_type(
    node: Section,
    group: str,
    template: dict[str, Any] | None,
    type_params: dict[str, str],
    images: _Images,
    commands: _Commands,
    max_workers: int | None,
    ctx: Context,
) -> WorkerGroup:
    minimum = node.integer("min_workers")
    maximum = node.integer("max_workers")
    if maximum is None and max_workers is not None:
        maximum = max(max_workers, minimum or 0)
    counts = bounds(minimum, maximum, None, f"{node.path}.", CONFIG_NAMES)
    own = node.commands("worker_setup_commands") if node.has("worker_setup_commands") else None
    idle_s = node.number("idle_timeout_s")
    params = {**resolve_params(commands.worker_start, template, False, ctx), **type_params}
    paths = (node.key_path("resources"), node.key_path("node_config"))
    return worker_group(group, template, images.worker, params, paths, counts, commands.worker(own), idle_s)
