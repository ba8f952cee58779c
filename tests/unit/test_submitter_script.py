"""The K8sJob-mode submitter's shell (`SUBMITTER_SCRIPT`), run by bash against a stand-in `ray` command: an unknown
submission id is submitted then followed, a known one only followed, a refused submit of an id Ray knows meanwhile
still followed; the exit code is the follower's; the follower's output reaches the pod's log while it runs (the
`ray` CLI is Python, block-buffered on a pipe unless told otherwise); SIGTERM to the shell alone (what a kubelet
sends: the container's main process) or to its process group ends the submitter at once with 143 and stops the
follower.

The stand-in keeps its state in a folder: `known` (Ray has the submission), `submitted` (the submit's arguments),
`follower.pid`, `submit-fails`, `known-after-refusal`, and `end` (the Ray job ended: the follower prints its last line and exits)."""

from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from rayop.jobplan import SUBMITTER_SCRIPT

ADDRESS = "http://r-head.ns.svc:8265"
SID = "rayjob-uid-1"

# `ray job status|submit|logs` as the script calls them. Like Ray's `ray job logs`, the follower prints without
# flushing, so what reaches the pipe while it runs depends on Python's buffering.
FAKE_RAY = """#!{python}
import os, sys, time
state = os.environ["FAKE_RAY_STATE"]
def path(name):
    return os.path.join(state, name)
args = sys.argv[1:]
if args[:2] == ["job", "status"]:
    sys.exit(0 if os.path.exists(path("known")) else 1)
if args[:2] == ["job", "submit"]:
    with open(path("submitted"), "w") as f:
        f.write("\\n".join(args[2:]))
    if os.path.exists(path("submit-fails")):
        print("submit refused", file=sys.stderr)
        if os.path.exists(path("known-after-refusal")):
            open(path("known"), "w").close()
        sys.exit(1)
    open(path("known"), "w").close()
    print("submitted")
    sys.exit(0)
if args[:2] == ["job", "logs"]:
    with open(path("follower.pid"), "w") as f:
        f.write(str(os.getpid()))
    print("program: started")
    while not os.path.exists(path("end")):
        time.sleep(0.05)
    print("program: finished")
    sys.exit(int(os.environ.get("FAKE_RAY_LOGS_EXIT", "0")))
sys.exit(2)
"""


class Submitter:
    """The script run as a container would run it (`bash -c SCRIPT rayop-submit ADDRESS SID OPTIONS -- ENTRY`),
    its own session and process group, stdout and stderr into one pipe read line by line."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None):
        self.state = tmp / "state"
        self.state.mkdir()
        bindir = tmp / "bin"
        bindir.mkdir()
        ray = bindir / "ray"
        ray.write_text(FAKE_RAY.format(python=sys.executable))
        ray.chmod(ray.stat().st_mode | stat.S_IXUSR)
        clean = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        self.env = {**clean, "PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_RAY_STATE": str(self.state),
                    **(env or {})}
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen(
            ["bash", "-c", SUBMITTER_SCRIPT, "rayop-submit", ADDRESS, SID, "--metadata-json", "{}", "--",
             "python", "x.py"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=self.env, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        return self.proc

    def _read(self, out: IO[str] | None) -> None:
        assert out is not None
        for line in out:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, text: str) -> None:
        """Until a line with `text` came through the pipe (the guard only stops a hang: it never should take
        more than a moment)."""
        while not any(text in x for x in self.seen):
            try:
                self.seen.append(self.lines.get(timeout=30))
            except queue.Empty:
                pytest.fail(f"no line with {text!r} while the follower runs; so far: {self.seen}")

    def end_job(self) -> None:
        (self.state / "end").touch()

    def finish(self) -> tuple[int, list[str]]:
        assert self.proc is not None
        code = self.proc.wait(60)
        time.sleep(0.1)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, self.seen

    def follower_pid(self) -> int:
        return int((self.state / "follower.pid").read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def submitter(tmp_path: Path) -> Iterator[Submitter]:
    s = Submitter(tmp_path)
    yield s
    s.end_job()
    s.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, its parent gone or not reaping yet) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_an_unknown_id_is_submitted_then_followed_and_the_exit_code_is_the_followers(submitter: Submitter) -> None:
    submitter.start()
    submitter.wait_for_line("program: started")
    submitter.end_job()
    code, lines = submitter.finish()
    assert code == 0, lines
    assert lines == [f"rayop: submitting {SID} to {ADDRESS}", "submitted", "program: started",
                     "program: finished"], lines
    submitted = (submitter.state / "submitted").read_text().split("\n")
    assert submitted == ["--address", ADDRESS, "--submission-id", SID, "--no-wait", "--metadata-json", "{}", "--",
                         "python", "x.py"]


def test_the_followers_failure_is_the_submitters(tmp_path: Path) -> None:
    s = Submitter(tmp_path, {"FAKE_RAY_LOGS_EXIT": "3"})
    try:
        s.start()
        s.end_job()
        code, lines = s.finish()
        assert code == 3 and lines[-1] == "program: finished", lines
    finally:
        s.kill()


def test_a_known_id_is_only_followed(submitter: Submitter) -> None:
    (submitter.state / "known").touch()
    submitter.start()
    submitter.end_job()
    code, lines = submitter.finish()
    assert code == 0
    assert lines == [f"rayop: Ray already has the submission {SID}; following its logs", "program: started",
                     "program: finished"], lines
    assert not (submitter.state / "submitted").exists()


def test_a_refused_submit_fails_unless_ray_knows_the_id_meanwhile(submitter: Submitter) -> None:
    (submitter.state / "submit-fails").touch()
    submitter.start()
    code, lines = submitter.finish()
    assert code == 1 and "program: started" not in lines, lines


def test_a_refused_submit_of_an_id_ray_knows_meanwhile_is_followed(submitter: Submitter) -> None:
    # Another submitter got the id in first: the submit is refused, and then Ray knows the id.
    (submitter.state / "submit-fails").touch()
    (submitter.state / "known-after-refusal").touch()
    submitter.start()
    submitter.end_job()
    code, lines = submitter.finish()
    assert code == 0 and lines[-2:] == ["program: started", "program: finished"], lines
    assert f"rayop: submitting {SID} to {ADDRESS}" in lines and "submit refused" in lines, lines


def test_the_followers_output_reaches_the_log_while_it_runs(submitter: Submitter) -> None:
    """The program's first line is in the pipe while the follower still waits for the job's end (the stand-in,
    like Ray's CLI, prints without flushing)."""
    submitter.start()
    submitter.wait_for_line("program: started")
    assert alive(submitter.follower_pid())
    submitter.end_job()
    code, _ = submitter.finish()
    assert code == 0


@pytest.mark.parametrize("target", ["main process", "process group"])
def test_sigterm_ends_the_submitter_with_143_and_stops_the_follower(submitter: Submitter, target: str) -> None:
    """A kubelet sends SIGTERM to the container's main process only (the node agent of process mode to its process
    group): either way the shell exits 143 while the job still runs, and takes the follower with it."""
    proc = submitter.start()
    submitter.wait_for_line("program: started")
    follower = submitter.follower_pid()
    if target == "main process":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    code, lines = submitter.finish()
    assert code == 143, lines
    assert "program: finished" not in lines, lines
    for _ in range(200):
        if not alive(follower):
            break
        time.sleep(0.05)
    assert not alive(follower), "the follower outlived the submitter"
