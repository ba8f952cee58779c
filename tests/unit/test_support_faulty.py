"""The crash hook of the crash tests (tests/support/faulty.py): it ends the process right after the Nth write the
API server accepted, and only then."""

from __future__ import annotations

import pytest

from tests.support.fakes import FakeWriter, forbidden
from tests.support.faulty import EXIT_CODE, ExitAfterWrites


class Exited(Exception):
    pass


def exit_now(code: int) -> None:
    raise Exited(code)


def test_the_nth_accepted_write_ends_the_process_reads_and_refusals_do_not_count() -> None:
    inner = FakeWriter()
    inner.put("Pod", "ns", {"metadata": {"name": "a"}})
    inner.refuse("create", "Pod", forbidden(), times=1)
    writer = ExitAfterWrites(inner, 3, exit=exit_now)
    with pytest.raises(type(forbidden())):
        writer.create("Pod", "ns", {"metadata": {"generateName": "p-"}})
    writer.get("Pod", "ns", "a")
    writer.patch("Pod", "ns", "a", {"metadata": {"labels": {"x": "1"}}})
    writer.create("Pod", "ns", {"metadata": {"generateName": "p-"}})
    assert writer.count == 2
    with pytest.raises(Exited) as exited:
        writer.patch_status("ns", "r", {"phase": "Running"})
    assert exited.value.args == (EXIT_CODE,)
    # The write went through before the exit, as a crash right after it.
    assert inner.statuses == {("ns", "r"): [{"phase": "Running"}]}


def test_a_delete_counts() -> None:
    inner = FakeWriter()
    uid = inner.put("Pod", "ns", {"metadata": {"name": "a"}})["metadata"]["uid"]
    writer = ExitAfterWrites(inner, 1, exit=exit_now)
    with pytest.raises(Exited):
        writer.delete("Pod", "ns", "a", {"preconditions": {"uid": uid}})
    assert inner.names("Pod") == []
