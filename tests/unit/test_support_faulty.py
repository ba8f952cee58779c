"""The crash hooks of the crash tests (tests/support/faulty.py): they end the process right after the Nth write
the API server accepted, or right after Ray accepted a submission, and only then."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rayop.jobsubmit import SubmissionRejected
from tests.support.fakes import FakeWriter, forbidden
from tests.support.faulty import EXIT_CODE, ExitAfterSubmit, ExitAfterWrites


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


def test_an_accepted_submission_ends_the_process_a_refused_one_does_not() -> None:
    answers = iter([(200, {"submission_id": "rayjob-1"}), (400, {"error": "runtime_env is invalid"})])

    class Dashboard(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            self.rfile.read(int(self.headers["Content-Length"]))
            status, body = next(answers)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ExitAfterSubmit(exit=exit_now)
        address = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(Exited) as exited:
            client.submit(address, {"entrypoint": "true", "submission_id": "rayjob-1"})
        assert exited.value.args == (EXIT_CODE,)
        with pytest.raises(SubmissionRejected):
            client.submit(address, {"entrypoint": "true", "submission_id": "rayjob-2"})
    finally:
        server.shutdown()
        server.server_close()
