"""Reflector timing rules and the one fault the real API server will not produce on demand (429).

Everything else the reflector does (dropped watches, 410 Gone, server restarts) is tested against the real API
server in tests/integration/test_runtime_informer.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from rayop.runtime.kube import ApiError, KubeClient
from rayop.runtime.reflector import Backoff, Reflector, watch_timeout


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_watch_timeout_is_jittered_in_min_to_twice_min(rand: float) -> None:
    assert 300 <= watch_timeout(300, lambda: rand) < 600


def test_backoff_grows_caps_jitters_and_resets() -> None:
    backoff = Backoff(base=1.0, cap=8.0, jitter=0.5, rand=lambda: 1.0)
    assert [backoff.next() for _ in range(6)] == [1.5, 3.0, 6.0, 12.0, 12.0, 12.0]
    backoff.reset()
    assert backoff.next() == 1.5
    assert backoff.next(at_least=20.0) == 20.0


class ScriptedClient:
    """Answers list and watch calls from a script; each entry is a value or an exception to raise."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists = lists
        self.watches = watches
        self.on_exhausted: Any = None
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def request(self, method: str, path: str, params: dict[str, Any], decode: Any = None) -> Any:
        self.calls.append(("list", dict(params)))
        step = self.lists.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def watch(self, path: str, params: dict[str, Any], *, timeout: float, on_open: Any,
              decode_event: Any = None) -> Iterator[Any]:
        self.calls.append(("watch", dict(params)))
        if not self.watches:
            self.on_exhausted()
            return
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        yield from step


class Recorder:
    def __init__(self) -> None:
        self.replaced: list[tuple[list[str], str]] = []
        self.applied: list[tuple[str, str]] = []

    def replace(self, items: list[dict[str, Any]], resource_version: str, scope: str | None) -> None:
        self.replaced.append(([i["metadata"]["name"] for i in items], resource_version))

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        self.applied.append((event_type, obj["metadata"]["name"]))


def page(rv: str, *names: str, token: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": rv}
    if token:
        meta["continue"] = token
    return {"kind": "PodList", "apiVersion": "v1", "metadata": meta,
            "items": [{"metadata": {"name": n, "resourceVersion": rv}} for n in names]}


def ev(kind: str, name: str, rv: str) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {"name": name, "resourceVersion": rv}}}


def too_many(retry_after: int | None) -> ApiError:
    body = {"details": {"retryAfterSeconds": retry_after}} if retry_after else {}
    return ApiError(429, "TooManyRequests", "slow down", body)


def test_429_waits_for_retry_after_then_resumes_from_the_last_resource_version() -> None:
    sink = Recorder()
    client = ScriptedClient(
        lists=[too_many(7), page("10", "a", "b", token="t1"), page("11", "c")],
        watches=[
            [ev("ADDED", "d", "12"), {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}],
            too_many(None),
            [ev("DELETED", "a", "21")],
        ],
    )
    sleeps: list[float] = []
    reflector = Reflector(
        cast(KubeClient, client), "/api/v1/pods", sink, label_selector="x=y", page_size=2,
        backoff=Backoff(base=0.5, cap=30, jitter=0.0),
        sleep=lambda s, seconds: sleeps.append(seconds) or s.is_set(),
    )
    client.on_exhausted = reflector.stop
    reflector.run()

    assert sleeps == [7.0, 1.0], "429 waits Retry-After (or at least 1 s) and the backoff restarts after success"
    assert sink.replaced == [(["a", "b", "c"], "11")]
    assert sink.applied == [("ADDED", "d"), ("DELETED", "a")]
    lists = [p for kind, p in client.calls if kind == "list"]
    assert lists[1] == {"labelSelector": "x=y", "limit": 2}
    assert lists[2] == {"labelSelector": "x=y", "limit": 2, "continue": "t1"}
    watches = [p for kind, p in client.calls if kind == "watch"]
    assert [w["resourceVersion"] for w in watches] == ["11", "20", "20", "21"]
    assert all(w["allowWatchBookmarks"] == "true" and w["labelSelector"] == "x=y" for w in watches)
    assert reflector.stats.throttled == 2 and reflector.stats.bookmarks == 1


def test_gone_inside_a_watch_relists_and_expired_continue_lists_unpaged() -> None:
    sink = Recorder()
    gone = ApiError(410, "Expired", "too old resource version")
    client = ScriptedClient(
        lists=[page("10", "a"), page("30", "b", token="t"), gone, page("31", "b", "c")],
        watches=[gone],
    )
    reflector = Reflector(cast(KubeClient, client), "/api/v1/pods", sink, page_size=1,
                          sleep=lambda s, seconds: pytest.fail("no backoff expected"))
    client.on_exhausted = reflector.stop
    reflector.run()
    assert sink.replaced == [(["a"], "10"), (["b", "c"], "31")]
    lists = [p for kind, p in client.calls if kind == "list"]
    assert lists[-1] == {}, "after an expired continue token the list is taken in one page"
    assert reflector.stats.relists_gone == 1


def test_lists_are_consistent_reads_never_from_a_possibly_stale_cache() -> None:
    """No resourceVersion on any list page (resourceVersion=0 would let a lagging API server answer from its watch
    cache; see docs/runtime.md, "Stale reads"); the watch starts from the list's resourceVersion."""
    sink = Recorder()
    client = ScriptedClient(lists=[page("10", "a", token="t1"), page("11", "b")], watches=[[ev("ADDED", "c", "12")]])
    reflector = Reflector(cast(KubeClient, client), "/api/v1/pods", sink, page_size=1,
                          sleep=lambda s, seconds: s.is_set())
    client.on_exhausted = reflector.stop
    reflector.run()
    lists = [p for kind, p in client.calls if kind == "list"]
    assert lists == [{"limit": 1}, {"limit": 1, "continue": "t1"}]
    watches = [p for kind, p in client.calls if kind == "watch"]
    assert watches[0]["resourceVersion"] == "11"
