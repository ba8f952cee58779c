"""The long spec-sequence run of `make soak`: N sequences of tests/integration/test_spec_sequences.py, drawn at
random, split over K pytest processes that run side by side on the local control plane.

    .venv/bin/python bench/spec_sequences.py --sequences 1000 --workers 8 --steps 6 [--json FILE]

A step mostly waits (pods starting, a 2.5 s quiet period), so one sequence after the other leaves the machine idle;
K processes each run their own hypothesis state machine (RAYOP_SEQ_RANDOM=1: independent random draws), their own
operator, their own pair of namespaces (live and fresh), and so check the same oracles as the CI run: the state
after each step equals a fresh `Ray`'s with the same spec, a revert brings back the earlier state, and the pod
watch's bounds hold at every event. Each process is asked for ceil(N / K) examples (hypothesis may run a few more).

The run passes when every process passes and the sequences together reach N; it prints each process's summary line
("spec sequences: ...") and the totals, and writes them to /tmp/rayop-bench-results/spec-sequences-<run>/ with each
process's output (`worker-K.log`: a failing sequence is printed there, with the specs it applied). A process that
fails stops the others only with --fail-fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"spec sequences: (\d+) sequences, (\d+) steps \((\d+) reverts\), (\d+) fresh Rays, "
                     r"(\d+) distinct specs, (\d+)s")


def parse_summary(text: str) -> dict[str, int] | None:
    """The numbers of the test's summary line, or None when the process printed none."""
    m = SUMMARY.search(text)
    if m is None:
        return None
    keys = ("sequences", "steps", "reverts", "fresh", "distinct", "seconds")
    return dict(zip(keys, (int(g) for g in m.groups())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", type=int, default=1000, help="sequences in all (default 1000)")
    p.add_argument("--workers", type=int, default=8, help="pytest processes side by side (default 8)")
    p.add_argument("--steps", type=int, default=6, help="at most this many steps per sequence (default 6)")
    p.add_argument("--fail-fast", action="store_true", help="stop the other processes when one fails")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.sequences < 1 or args.workers < 1 or args.steps < 1:
        p.error("--sequences, --workers and --steps must be at least 1")

    run = time.strftime("%Y%m%d-%H%M%S")
    out = Path("/tmp/rayop-bench-results") / f"spec-sequences-{run}"
    out.mkdir(parents=True, exist_ok=True)
    per = math.ceil(args.sequences / args.workers)
    python = Path(sys.executable)
    procs: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    started = time.monotonic()
    for k in range(args.workers):
        log = out / f"worker-{k}.log"
        env = dict(os.environ, RAYOP_SEQ_EXAMPLES=str(per), RAYOP_SEQ_STEPS=str(args.steps), RAYOP_SEQ_RANDOM="1")
        cmd = [str(python), "-m", "pytest", "tests/integration/test_spec_sequences.py", "-s", "-p", "no:cacheprovider",
               "--basetemp", str(out / f"tmp-{k}")]
        with log.open("wb") as f:
            procs.append((k, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT), log))
        print(f"worker {k}: {per} examples of at most {args.steps} steps -> {log}", flush=True)

    codes: dict[int, int] = {}
    while len(codes) < len(procs):
        for k, proc, _ in procs:
            if k in codes or proc.poll() is None:
                continue
            codes[k] = proc.returncode
            print(f"worker {k} exited {proc.returncode} after {time.monotonic() - started:.0f}s", flush=True)
            if proc.returncode != 0 and args.fail_fast:
                for _, other, _ in procs:
                    if other.poll() is None:
                        other.terminate()
        time.sleep(2)

    workers = []
    totals = {"sequences": 0, "steps": 0, "reverts": 0, "fresh": 0}
    for k, _, log in procs:
        text = log.read_text(errors="replace")
        summary = parse_summary(text)
        line = next((ln for ln in text.splitlines() if "spec sequences:" in ln), "(no summary line)")
        print(f"worker {k} (exit {codes[k]}): {line.strip()}")
        workers.append({"worker": k, "exit": codes[k], "summary": summary, "line": line.strip(), "log": str(log)})
        for key in totals:
            totals[key] += (summary or {}).get(key, 0)
    elapsed = time.monotonic() - started
    failed = [w["worker"] for w in workers if w["exit"] != 0]
    short = totals["sequences"] < args.sequences
    result = {"sequences_asked": args.sequences, "workers": args.workers, "steps_max": args.steps,
              "examples_per_worker": per, "seconds": round(elapsed), "totals": totals, "per_worker": workers,
              "failed_workers": failed, "passed": not failed and not short}
    print(f"spec sequences in all: {totals['sequences']} sequences, {totals['steps']} steps "
          f"({totals['reverts']} reverts), {totals['fresh']} fresh Rays, {elapsed:.0f}s with {args.workers} workers")
    if failed:
        print(f"FAIL: worker(s) {failed} failed; their logs hold the failing sequence")
    elif short:
        print(f"FAIL: {totals['sequences']} sequences ran, fewer than the {args.sequences} asked for")
    else:
        print("PASS")
    text = json.dumps(result, indent=2)
    (out / "results.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
