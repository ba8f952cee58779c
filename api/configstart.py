"""The start commands of a `configuration` (`head_start_ray_commands`, `worker_start_ray_commands`) as the operator
runs them: the flags of their `ray start`, and the shell commands before it.

Guarantees:
- The shell commands before `ray start` run, after the setup commands, as `ray up`'s shell ran them (a failing one
  does not stop the next unless joined with `&&`); `ray stop` is dropped (a fresh pod has nothing to stop), so is
  a hand-started Ray Client server (Ray 2's `ray start --head` runs it), and anything after `ray start` is reported.
- Only flags Ray 2's `ray start` takes are kept (`rayop.api.legacy`): a flag of Ray before 2.x is renamed (a note)
  or dropped (a warning), the operator's own flags are dropped, the head's `--port` must be the GCS port.
- `resolve_params` resolves `$VAR`s in flag values from a group's pod template as the container's shell would
  have; a value it cannot resolve is reported and left out.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rayop.api.configyaml import Context
from rayop.api.groups import check_port
from rayop.api.legacy import (
    CLIENT_SERVER_MODULE,
    DROPPED_FLAGS,
    RAY_START_FLAGS,
    RENAMED_FLAGS,
    container_env,
    expand,
    references,
)
from rayop.api.model import ConfigurationError, ConfigWarning
from rayop.api.modelcheck import ray_container, short
from rayop.api.types import GCS_PORT, MANAGED_START_PARAMS

__all__ = ["Start", "start_params", "resolve_params"]


# Flags of `ray start` the operator sets itself, and that a user's configuration may carry without a warning.
_SILENT_FLAGS_HEAD = {"head", "autoscaling-config", "block", "no-monitor"}
_SILENT_FLAGS_WORKER = {"address", "autoscaling-config", "block"}
_SEPARATORS = {";", "&&", "||", "|", "&", "\n"}
# Separators after which `ray up`'s shell went on whatever the command before exited with.
_GO_ON = {";", "\n", "&", "||", "|", None}
_RAY_START_AT = re.compile(r"(^|&&|\|\||;|&|\||\n)\s*ray\s+start\b")
_AFTER_START = "the operator runs `ray start` as the container's last command"

# A command split at its shell separators: each piece's words, and the separator after it (None after the last).
Segments = list[tuple[list[str], str | None]]


@dataclass
class Start:
    """The start commands of the head or of the workers, as the operator runs them."""

    # The flags of `ray start` that are honoured; values may still refer to shell variables ($MY_CPU_REQUEST),
    # resolved per group against its pod template.
    params: dict[str, str] = field(default_factory=dict)
    # Where each flag was given (for warnings and notes).
    origin: dict[str, str] = field(default_factory=dict)
    # Other shell commands before `ray start` (`ulimit -n 65536`), run after the setup commands, as `ray up` did.
    shell: list[str] = field(default_factory=list)


def _words(text: str) -> list[str]:
    """The words and separators of a shell command; ValueError when it does not parse (an open quote)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    return list(lexer)


def _segments(command: str, where: str) -> Segments:
    try:
        tokens = _words(command)
    except ValueError as e:
        raise ConfigurationError(f"cannot be parsed as a shell command: {e}", field=where) from None
    segments: Segments = []
    segment: list[str] = []
    for token in tokens:
        if token in _SEPARATORS:
            segments.append((segment, token))
            segment = []
        else:
            segment.append(token)
    segments.append((segment, None))
    return segments


def start_params(commands: list[str], path: str, *, head: bool, ctx: Context) -> Start:
    """The start commands of the head (or the workers): the flags of their `ray start`, and the shell commands
    before it, which run as `ray up` ran them; `ray stop` is dropped and anything after `ray start` is reported."""
    start = Start()
    started = False
    for i, command in enumerate(commands):
        where = f"{path}[{i}]"
        segments = _segments(command, where)
        has_ray = any(s[:2] in (["ray", "start"], ["ray", "stop"]) for s, _ in segments)
        if not has_ray and not any(_client_server(s) for s, _ in segments):
            # A plain shell command of its own: run as given (before `ray start`), or reported after it.
            if started:
                ctx.warnings.append(ConfigWarning(where, f"{short(command)} is not run: it comes after `ray start`, and "
                                                  f"{_AFTER_START}"))
            elif command.strip():
                start.shell.append(command)
            continue
        skip = 0 if started else _raw_prefix(command, segments, start)
        for segment, separator in segments[skip:]:
            started = _segment(segment, separator, where, started, head=head, start=start, ctx=ctx)
    return start


def _segment(
    segment: list[str], separator: str | None, where: str, started: bool, *, head: bool, start: Start, ctx: Context
) -> bool:
    """Take one piece of a start command; return whether `ray start` has been seen (with this piece)."""
    if not segment or segment[:2] == ["ray", "stop"]:
        return started  # a fresh pod has nothing to stop
    if segment[:2] == ["ray", "start"]:
        _start_flags(segment[2:], where, head=head, start=start, ctx=ctx)
        return True
    if _client_server(segment):
        ctx.notes.append(ConfigWarning(where, f"{shlex.join(segment)!r} dropped: in Ray 2 `ray start --head` "
                                       "runs the Ray Client server itself (port 10001)"))
        return started
    text = shlex.join(segment)
    if started:
        ctx.warnings.append(ConfigWarning(where, f"{short(text)} is not run: it comes after `ray start`, and "
                                          f"{_AFTER_START}"))
    elif separator == "&":
        start.shell.append(f"{{ {text} & }}")
    elif separator in _GO_ON:
        start.shell.append(f"{{ {text}; true; }}")
    else:
        start.shell.append(text)
    return started


def _raw_prefix(command: str, segments: Segments, start: Start) -> int:
    """Keep the shell text before a command's `ray start` as written (quotes and `$VAR`s intact), when it holds
    nothing the operator drops; return how many segments that took (0: none, handle them one by one)."""
    first = next((k for k, (seg, _) in enumerate(segments) if seg[:2] == ["ray", "start"]), None)
    if not first:
        return 0
    before = segments[:first]
    if any(seg[:2] == ["ray", "stop"] or _client_server(seg) for seg, _ in before):
        return 0
    match = _RAY_START_AT.search(command)
    if match is None or not match.group(1):
        return 0
    text = command[: match.start()].strip()
    expected = [token for seg, sep in before for token in [*seg, sep or ""] if token][:-1]
    try:
        if _words(text) != expected:
            return 0
    except ValueError:
        return 0
    separator = before[-1][1]
    if separator == "&&":
        start.shell.append(f"{{ {text}; }}")
    elif separator == "&":
        start.shell.append(f"{{ {text} & }}")
    else:
        start.shell.append(f"{{ {text}; true; }}")
    return first


def _client_server(segment: list[str]) -> bool:
    return len(segment) >= 3 and segment[0].rsplit("/", 1)[-1].startswith("python") and segment[1:3] == [
        "-m",
        CLIENT_SERVER_MODULE,
    ]


def _start_flags(args: list[str], where: str, *, head: bool, start: Start, ctx: Context) -> None:
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-") or token.strip("-") == "":
            ctx.warnings.append(ConfigWarning(where, f"{short(token)} ignored: `ray start` takes only flags"))
            continue
        flag, eq, value = token.lstrip("-").partition("=")
        if not eq:
            if i < len(args) and not args[i].startswith("-"):
                value = args[i]
                i += 1
            else:
                value = ""
        _start_flag(flag, value, where, head=head, start=start, ctx=ctx)


def _start_flag(flag: str, value: str, where: str, *, head: bool, start: Start, ctx: Context) -> None:
    given = f"--{flag}" + (f"={value}" if value else "")
    name = RENAMED_FLAGS.get(flag, flag)
    if name == "port" and head:
        if value != str(GCS_PORT):
            ctx.warnings.append(ConfigWarning(where, f"{given} ignored: the head's GCS always listens on {GCS_PORT}"))
        return
    if name in (_SILENT_FLAGS_HEAD if head else _SILENT_FLAGS_WORKER):
        return
    if name in MANAGED_START_PARAMS:
        ctx.warnings.append(ConfigWarning(where, f"{given} ignored: the operator sets it"))
        return
    if flag in DROPPED_FLAGS:
        ctx.warnings.append(ConfigWarning(where, f"{given} ignored: {DROPPED_FLAGS[flag]}"))
        return
    if name not in RAY_START_FLAGS:
        ctx.warnings.append(
            ConfigWarning(
                where,
                f"{given} ignored: not a flag of `ray start` in Ray 2; passing it would keep the node from starting",
            )
        )
        return
    if name != flag:
        ctx.notes.append(ConfigWarning(where, f"--{flag} is --{name} in Ray 2: passed as --{name}"))
    start.params[name] = value
    start.origin[name] = where


def resolve_params(start: Start, template: Mapping[str, Any] | None, head: bool, ctx: Context) -> dict[str, str]:
    """The start flags of one group, with `$VAR` references resolved from its pod template the way the container's
    shell would have under `ray up`; a flag whose value cannot be resolved is reported and left out."""
    _, container = ray_container(template, head)
    env = container_env(container)
    out: dict[str, str] = {}
    for flag, value in start.params.items():
        names = references(value)
        if not names and "`" not in value and "$(" not in value:
            check_port(flag, value, start.origin[flag])
            out[flag] = value
            continue
        where = start.origin[flag]
        resolved = expand(value, env)
        if resolved is None:
            unknown = ", ".join(f"${n}" for n in names if env.get(n) is None) or value
            fallback = "; resources come from the container's requests and limits instead" if flag in (
                "num-cpus", "num-gpus", "memory", "object-store-memory") else ""
            ctx.warnings.append(
                ConfigWarning(
                    where,
                    f"--{flag}={value} ignored: the pod template does not determine {unknown} (only literal env "
                    f"values and resourceFieldRef of the container's own resources are resolved){fallback}",
                )
            )
            continue
        check_port(flag, resolved, where)
        out[flag] = resolved
        ctx.notes.append(
            ConfigWarning(where, f"--{flag}={value} resolved to --{flag}={resolved} from the Ray container's env")
        )
    return out
