"""The pod manifests of a `configuration` (`head_node`, `worker_nodes`, a node type's `node_config`) as pod
templates, with `ray up`'s contract applied.

Guarantees:
- Only apiVersion (v1), kind (Pod), metadata labels and annotations, and the spec of a manifest are used; every
  other key is reported. The template is a checked JSON copy (`rayop.api.modelcheck`).
- The Ray container's command gives way to the configuration's setup and start commands (`ray up` ran them over
  kubectl exec): a keep-alive command with a note, any other command with a warning; a command that runs
  `$RAYOP_RAY_START_COMMAND` is kept.
- A ServiceAccount the configuration asked `ray up` to create is dropped from the pod (a note): the operator's
  own account (or the namespace's default) is used instead.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rayop.api.configyaml import Context, Section
from rayop.api.legacy import keep_alive
from rayop.api.model import ConfigurationError, ConfigWarning
from rayop.api.modelcheck import Budget, check_template, json_copy, ray_container, short

__all__ = ["START_HOOK", "config_pod"]

# The variable holding the operator's start command in the Ray container.
START_HOOK = "RAYOP_RAY_START_COMMAND"


def _pod_template(value: object, path: str, warnings: list[ConfigWarning], budget: Budget) -> dict[str, Any] | None:
    """A pod manifest (`kind: Pod`) as a pod template: metadata labels and annotations, and the spec."""
    if value is None:
        return None
    pod = Section(value, path, warnings)
    api_version = pod.get("apiVersion")
    if api_version is not None and api_version != "v1":
        raise ConfigurationError(f"must be 'v1', got {short(api_version)}", field=pod.key_path("apiVersion"))
    kind = pod.get("kind")
    if kind is not None and kind != "Pod":
        raise ConfigurationError(f"must be 'Pod', got {short(kind)}", field=pod.key_path("kind"))
    template: dict[str, Any] = {}
    kept = _pod_metadata(pod.section("metadata"), budget)
    if kept:
        template["metadata"] = kept
    spec = pod.get("spec")
    if spec is not None:
        if not isinstance(spec, Mapping):
            raise ConfigurationError("must be a mapping (a pod spec)", field=pod.key_path("spec"))
        template["spec"] = json_copy(spec, pod.key_path("spec"), budget)
    check_template(template, path)
    pod.report_unknown("ignored: only apiVersion, kind, metadata and spec of a pod manifest are used")
    return template


def _pod_metadata(metadata: Section, budget: Budget) -> dict[str, Any]:
    """The labels and annotations of a pod manifest's metadata; the rest is reported."""
    kept: dict[str, Any] = {}
    for key in ("labels", "annotations"):
        item = metadata.get(key)
        if item is not None:
            kept[key] = json_copy(item, metadata.key_path(key), budget)
    for key in ("name", "generateName"):
        metadata.ignore(
            key, "ignored: the operator names pods <name>-head-<5 characters> and <name>-<group>-<5 characters>"
        )
    metadata.ignore("namespace", "ignored: pods run in the Ray object's namespace")
    metadata.report_unknown("ignored: only labels and annotations of pod metadata are used")
    return kept


def config_pod(value: object, path: str, *, head: bool, ctx: Context) -> dict[str, Any] | None:
    """A pod manifest of a configuration, with `ray up`'s contract applied: the Ray container's command is replaced
    by the configuration's setup and start commands, and a ServiceAccount the configuration asked `ray up` to create
    is replaced by the operator's (the head's autoscaler account; the namespace's default for the others)."""
    template = _pod_template(value, path, ctx.warnings, ctx.budget)
    if not template or not isinstance(template.get("spec"), dict):
        return template
    spec: dict[str, Any] = template["spec"]
    index, _ = ray_container(template, head)
    if index >= 0:
        _replace_command(spec["containers"][index], f"{path}.spec.containers[{index}]", ctx)
    _replace_accounts(spec, f"{path}.spec", head, ctx)
    return template


def _replace_command(container: dict[str, Any], where: str, ctx: Context) -> None:
    """Drop the Ray container's command and args unless they start Ray through the operator's start command."""
    command, args = container.get("command"), container.get("args")
    if not (command or args):
        return
    shown = " ".join(str(p) for p in [*_as_list(command), *_as_list(args)])
    if START_HOOK in json.dumps([command, args]):
        return  # the command starts Ray itself through the operator's start command
    container.pop("command", None)
    container.pop("args", None)
    if keep_alive(command, args):
        ctx.notes.append(ConfigWarning(
            f"{where}.command",
            f"the keep-alive command {short(shown)} is replaced by the configuration's setup and start commands: "
            "`ray up` ran them in the pod over kubectl exec, the operator makes them the container's command",
        ))
    else:
        ctx.warnings.append(ConfigWarning(
            f"{where}.command",
            f"{short(shown)} is not run: as under `ray up`, Ray runs from the configuration's setup and start "
            f"commands, which become the container's command (a command that runs ${START_HOOK} is kept)",
        ))


def _replace_accounts(spec: dict[str, Any], where: str, head: bool, ctx: Context) -> None:
    """Drop a ServiceAccount the configuration asked `ray up` to create; the operator's or the default is used."""
    for key in ("serviceAccountName", "serviceAccount"):
        account = spec.get(key)
        if isinstance(account, str) and account in ctx.accounts:
            del spec[key]
            instead = (
                f"the operator's autoscaler ServiceAccount ({ctx.name}-autoscaler) when autoscaling is on, else the "
                "namespace's default" if head else "the namespace's default ServiceAccount"
            )
            ctx.notes.append(ConfigWarning(
                f"{where}.{key}",
                f"{short(account)} is the account the configuration asked `ray up` to create; the pod runs as {instead}",
            ))


# The parts of a container's command or args, whatever the manifest holds.
def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]
