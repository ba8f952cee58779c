"""Reading a `configuration` (a cluster-launcher YAML): parsing it, and walking its mappings key by key.

Guarantees:
- `parse_configuration(text)` returns the top-level mapping or raises `ConfigurationError` with line and column for
  YAML errors; duplicate keys are errors; a text whose YAML aliases expand to more than
  `MAX_CONFIGURATION_VALUES` values is refused whole.
- A `Section` remembers which keys were read, so every key is either honoured or reported (`report_unknown`); its
  typed getters raise `ConfigurationError` naming the key.
- Pure: no I/O, no clock, no environment.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from rayop.api.model import ConfigurationError, ConfigWarning
from rayop.api.modelcheck import Budget, finite_number, is_empty, short
from rayop.api.schema import INT32_MAX

__all__ = ["CONFIG_PATH", "MAX_CONFIGURATION_VALUES", "Context", "Section", "parse_configuration"]

CONFIG_PATH = "spec.configuration"
# A cluster-launcher configuration with its aliases expanded may hold at most this many values (Ray's own
# examples hold a few hundred).
MAX_CONFIGURATION_VALUES = 100_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys in a mapping (YAML says keys are unique; PyYAML keeps the last)."""


# A generator, as PyYAML's own map constructor: it yields the (empty) mapping first, so that aliases can refer to it.
def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Generator[dict[Any, Any]]:
    seen: set[object] = set()
    for key_node, _value in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {short(key)}", key_node.start_mark
            )
    return loader.construct_yaml_map(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:map", _construct_unique_mapping)


def _expanded_size(value: object) -> int:
    """How many values `value` holds once every alias is expanded; linear in the distinct values (shared ones are
    counted once and multiplied), and stops early past the limit."""
    sizes: dict[int, int] = {}

    def size(v: object) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        known = sizes.get(id(v))
        if known is not None:
            return known
        sizes[id(v)] = MAX_CONFIGURATION_VALUES + 1  # met again before it is done: a cycle, which never ends
        items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
        total = 1
        for item in items:
            total += size(item)
            if total > MAX_CONFIGURATION_VALUES:
                break
        sizes[id(v)] = total
        return total

    try:
        return size(value)
    except RecursionError:
        return MAX_CONFIGURATION_VALUES + 1


def _load(text: str) -> object:
    """The YAML value of `text`; ConfigurationError with line and column when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        raise ConfigurationError(
            f"invalid YAML: {problem}",
            field=CONFIG_PATH,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ConfigurationError(f"invalid YAML: {e.reason}", field=CONFIG_PATH, line=line, column=column) from None
    except yaml.YAMLError as e:
        raise ConfigurationError(f"invalid YAML: {e}", field=CONFIG_PATH) from None
    except RecursionError:
        raise ConfigurationError("invalid YAML: nested too deeply", field=CONFIG_PATH) from None
    except (ValueError, TypeError, OverflowError) as e:
        # A scalar with an explicit or implicit tag that does not construct, e.g. the date 2020-13-45.
        raise ConfigurationError(f"invalid YAML value: {e}", field=CONFIG_PATH) from None


def parse_configuration(text: str) -> dict[str, object]:
    """Parse a cluster-launcher configuration; ConfigurationError with line and column when it is not valid YAML."""
    loaded = _load(text)
    if loaded is None:
        raise ConfigurationError("is empty: expected a mapping of cluster-launcher keys", field=CONFIG_PATH)
    if not isinstance(loaded, dict):
        raise ConfigurationError("must be a YAML mapping of cluster-launcher keys", field=CONFIG_PATH, line=1, column=1)
    if _expanded_size(loaded) > MAX_CONFIGURATION_VALUES:
        # YAML aliases share one value however often it is referenced; everything downstream copies each reference
        # (a nine-level "billion laughs" config would need gigabytes), so such a config is refused whole.
        raise ConfigurationError(
            f"is too large: expands to more than {MAX_CONFIGURATION_VALUES:,} values through YAML aliases",
            field=CONFIG_PATH)
    for key in loaded:
        if not isinstance(key, str):
            raise ConfigurationError(f"keys must be strings, got {short(key)}", field=CONFIG_PATH)
    return loaded


class Section:
    """The keys of one mapping of the configuration; remembers which ones were looked at."""

    def __init__(self, data: object, path: str, warnings: list[ConfigWarning]):
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigurationError("must be a mapping", field=path)
        for key in data:
            if not isinstance(key, str):
                raise ConfigurationError(f"keys must be strings, got {short(key)}", field=path)
        # The values are the YAML's, whatever it holds, until a getter below checks them.
        self.data: Mapping[str, object] = data
        self.path = path
        self.warnings = warnings
        self.seen: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> object:
        """The value as the YAML has it, for the caller to check."""
        self.seen.add(key)
        return self.data.get(key)

    def warn(self, key: str, why: str) -> None:
        self.seen.add(key)
        self.warnings.append(ConfigWarning(self.key_path(key), why))

    def ignore(self, key: str, why: str) -> None:
        """Report `key` as ignored when it is set to something other than an empty value."""
        self.seen.add(key)
        if key in self.data and not is_empty(self.data[key]):
            self.warnings.append(ConfigWarning(self.key_path(key), why))

    def integer(self, key: str, minimum: int = 0) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"must be an integer, got {short(value)}", field=self.key_path(key))
        if value < minimum:
            raise ConfigurationError(f"must be at least {minimum}", field=self.key_path(key))
        if value > INT32_MAX:
            raise ConfigurationError("is too large", field=self.key_path(key))
        return value

    def number(
        self, key: str, minimum: float = 0.0, maximum: float | None = None, exclusive_minimum: bool = False
    ) -> float | None:
        raw = self.get(key)
        if raw is None:
            return None
        value = finite_number(raw)
        if value is None:
            raise ConfigurationError(f"must be a number, got {short(raw)}", field=self.key_path(key))
        if value < minimum or (exclusive_minimum and value == minimum):
            raise ConfigurationError(
                f"must be {'greater than' if exclusive_minimum else 'at least'} {minimum:g}", field=self.key_path(key)
            )
        if maximum is not None and value > maximum:
            raise ConfigurationError(f"must be at most {maximum:g}", field=self.key_path(key))
        if value > 1e12:
            raise ConfigurationError("is too large", field=self.key_path(key))
        return value

    def string(self, key: str) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigurationError(f"must be a string, got {short(value)}", field=self.key_path(key))
        return value

    def commands(self, key: str) -> list[str]:
        value = self.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise ConfigurationError("must be a list of shell commands (strings)", field=self.key_path(key))
        return list(value)

    def section(self, key: str) -> Section:
        return Section(self.get(key), self.key_path(key), self.warnings)

    def report_unknown(self, why: str) -> None:
        for key in self.data:
            if key not in self.seen:
                self.warnings.append(ConfigWarning(self.key_path(key), why))


@dataclass
class Context:
    """What the parts of a configuration's conversion share."""

    name: str
    warnings: list[ConfigWarning]
    notes: list[ConfigWarning]
    budget: Budget
    # ServiceAccounts the configuration asks `ray up` to create (provider.autoscaler_service_account, the subjects
    # of provider.autoscaler_role_binding): the operator creates its own instead, so pods naming them are pointed
    # at that one.
    accounts: set[str] = field(default_factory=set)
