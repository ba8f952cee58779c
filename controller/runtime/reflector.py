"""The reflector: keeps a sink in step with the API server by listing once and then watching.

Guarantees:
- List, then watch from the list's resourceVersion. The list is paged (`limit`/`continue`); an expired continue
  token restarts the list unpaged. The list is a consistent read (no resourceVersion), so a relist never goes back
  in time.
- Watches ask for bookmarks and carry a server-side timeout picked at random in [min, 2*min) so many reflectors do
  not reconnect in step. A watch that ends normally (timeout, server closed it) resumes from the last
  resourceVersion seen (events and bookmarks alike) without a relist.
- 410 Gone (at the start of a watch or inside its stream, or on a list page) leads to a fresh list; the sink's
  `replace` reports objects that vanished meanwhile, so deletions missed during the gap are not lost.
- Errors (connection refused or reset, 5xx, 429, 403 ...) are retried with jittered exponential backoff, forever,
  until `stop()`; 429 waits at least the server's Retry-After. The backoff resets after a list succeeds or a watch
  delivers an event or ends normally.
- Hot path: events stay raw JSON dicts; the only per-object work is the sink's transform.
- `stop()` ends a blocked watch at once (the response is shut down from the stopping thread). Running it again
  later resumes from the last resourceVersion seen, as after a dropped connection.
- Counters (`stats`) are plain integers read by the metrics layer at scrape time.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import urllib3

from rayop.runtime.kube import JSON, ApiError, KubeClient, abort_response
from rayop.runtime.projection import Projection

log = structlog.get_logger("rayop.reflector")


class Sink(Protocol):
    """Where a reflector delivers what it sees (the informer)."""

    def replace(self, items: list[JSON], resource_version: str, scope: str | None) -> None: ...

    def apply(self, event_type: str, obj: JSON) -> None: ...


@dataclass
class ReflectorStats:
    lists: int = 0
    relists_gone: int = 0
    watches: int = 0
    events: int = 0
    bookmarks: int = 0
    errors: int = 0
    throttled: int = 0


class Backoff:
    """Jittered exponential backoff: base * 2**n (capped), times a random factor in [1, 1 + jitter)."""

    def __init__(
        self,
        base: float = 0.8,
        cap: float = 30.0,
        jitter: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._rand = rand
        self.failures = 0

    def next(self, at_least: float = 0.0) -> float:
        delay = min(self.cap, self.base * (2.0 ** min(self.failures, 30)))
        self.failures += 1
        return max(at_least, delay * (1.0 + self._rand() * self.jitter))

    def reset(self) -> None:
        self.failures = 0


def watch_timeout(min_seconds: float, rand: Callable[[], float] = random.random) -> int:
    """A server-side watch timeout in [min, 2*min)."""
    return int(min_seconds * (1.0 + rand()))


class _Gone(Exception):
    pass


class Reflector:
    """Lists and watches one collection (`path`, optionally label/field selected) into a sink."""

    def __init__(
        self,
        client: KubeClient,
        path: str,
        sink: Sink,
        *,
        scope: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        kind: str = "",
        api_version: str = "",
        page_size: int = 500,
        min_watch_timeout: float = 300.0,
        backoff: Backoff | None = None,
        name: str = "",
        sleep: Callable[[threading.Event, float], bool] | None = None,
        projection: Projection | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.projection = projection
        self.sink = sink
        self.scope = scope
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.kind = kind
        self.api_version = api_version
        self.page_size = page_size
        self.min_watch_timeout = min_watch_timeout
        self.backoff = backoff or Backoff()
        self.name = name or path
        self.stats = ReflectorStats()
        self.resource_version = ""
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._response: Any = None
        self._response_lock = threading.Lock()
        self._sleep = sleep or (lambda stop, seconds: stop.wait(seconds))

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            abort_response(response)

    def rearm(self) -> None:
        """Allow `run()` again after `stop()` (call only while it is not running)."""
        self._stop.clear()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """List and watch until `stop()`. A reflector that ran before resumes watching from where it stopped
        (and relists only if that resourceVersion is gone)."""
        need_list = not self.synced.is_set()
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                    self.backoff.reset()
                self._watch()
                self.backoff.reset()
            except _Gone:
                self.stats.relists_gone += 1
                log.info("resource version too old, relisting", reflector=self.name, rv=self.resource_version)
                need_list = True
            except ApiError as e:
                if self._stop.is_set():
                    break
                if e.gone:
                    self.stats.relists_gone += 1
                    need_list = True
                    continue
                self.stats.errors += 1
                at_least = 0.0
                if e.too_many_requests:
                    self.stats.throttled += 1
                    at_least = e.retry_after or 1.0
                delay = self.backoff.next(at_least)
                log.warning("list/watch failed", reflector=self.name, status=e.status, error=e.message,
                            retry_in=round(delay, 2))
                self._sleep(self._stop, delay)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                if self._stop.is_set():
                    break
                self.stats.errors += 1
                delay = self.backoff.next()
                log.warning("list/watch failed", reflector=self.name, error=repr(e), retry_in=round(delay, 2))
                self._sleep(self._stop, delay)

    # -- list ---------------------------------------------------------------------------------------------------

    def _selectors(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params

    def _list(self) -> None:
        try:
            items, rv = self._list_pages(self.page_size)
        except ApiError as e:
            if not (e.gone and self.page_size):
                raise
            # The continue token expired between pages: take the whole list in one answer.
            items, rv = self._list_pages(0)
        self.stats.lists += 1
        self.resource_version = rv
        self.sink.replace(items, rv, self.scope)
        self.synced.set()

    def _list_pages(self, limit: int) -> tuple[list[JSON], str]:
        items: list[JSON] = []
        token: str | None = None
        rv = ""
        while True:
            params = self._selectors()
            if limit:
                params["limit"] = limit
            if token:
                params["continue"] = token
            page = self.client.request("GET", self.path, params=params,
                                       decode=self.projection.page if self.projection is not None else None)
            meta = page.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            kind = self.kind or str(page.get("kind") or "").removesuffix("List")
            api_version = self.api_version or str(page.get("apiVersion") or "")
            for item in page.get("items") or ():
                item["kind"] = kind
                item["apiVersion"] = api_version
                items.append(item)
            token = meta.get("continue")
            if not token or self._stop.is_set():
                return items, rv

    # -- watch --------------------------------------------------------------------------------------------------

    def _on_open(self, response: Any) -> None:
        with self._response_lock:
            self._response = response
        if self._stop.is_set():
            abort_response(response)

    def _watch(self) -> None:
        timeout = watch_timeout(self.min_watch_timeout)
        params = self._selectors()
        params.update(
            resourceVersion=self.resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=timeout,
        )
        self.stats.watches += 1
        events: Iterator[JSON] = self.client.watch(
            self.path, params, timeout=timeout + 30.0, on_open=self._on_open,
            decode_event=self.projection.event if self.projection is not None else None,
        )
        try:
            for event in events:
                if self._stop.is_set():
                    return
                self._handle(event)
        except ApiError as e:
            if e.gone:
                raise _Gone() from e
            raise
        except urllib3.exceptions.ProtocolError:
            # The connection dropped mid-stream (server restart, network): resume from the last resourceVersion.
            if self._stop.is_set():
                return
            raise
        finally:
            with self._response_lock:
                self._response = None

    def _handle(self, event: JSON) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            self.stats.events += 1
            self.sink.apply(kind, obj)
            self.backoff.reset()
        if rv:
            self.resource_version = rv


def run_in_thread(reflector: Reflector) -> threading.Thread:
    thread = threading.Thread(target=reflector.run, name=f"reflector:{reflector.name}", daemon=True)
    thread.start()
    return thread
