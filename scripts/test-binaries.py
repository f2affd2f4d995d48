#!/usr/bin/env python3
"""Builds every test binary of the workspace (as `cargo test --all-targets --features
test-hooks` does) and runs them: the CPU-bound ones first, alone, then the others several at
once. The integration tests are one binary (`tests/suite`, linked once); each of its modules
runs in a process of its own, as if it were a binary.

`cargo test` runs one binary after another, and most of ours spend their time waiting on
servers, runner processes and consumer-group rebalances with the CPU idle; run side by side
they take a fraction of the time. The simulation keeps every core busy on its own, so it runs
alone, where its time means something. The line `==> side by side` marks where the CPU turns
mostly idle.

Each binary's output is printed in one piece when it ends (the `Running` line when it starts),
then a summary of every binary's time. Exits non-zero when any binary failed, after all ran.

Environment: TEST_BINARIES_AT_ONCE (default 5) binaries run side by side.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

# CPU-bound binaries: they run first, one at a time.
ALONE = {"simulation"}
# The binary whose modules run as processes of their own.
SUITE = "suite"
# The longest binaries (or suite modules) start first so that the pool does not end on one of
# them alone. One missing here still runs; it only starts later.
LONGEST_FIRST = ["superset", "outage", "object_store", "scale", "stream", "metrics", "maintain", "dlq"]
# One binary's lines at a time on the terminal.
PRINTING = threading.Lock()


def build():
    """Builds the test binaries; returns each one's display name, target name, executable,
    package folder and arguments."""
    command = [
        "cargo", "test", "--locked", "--all-targets", "--features", "test-hooks", "--no-run",
        "--message-format=json-render-diagnostics",
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(done.returncode)
    root = os.getcwd()
    binaries = []
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        if not message["profile"]["test"]:
            continue
        target = message["target"]
        source = os.path.relpath(target["src_path"], root)
        kind = "unittests " if target["kind"] != ["test"] else ""
        binary = {
            "display": f"{kind}{source}",
            "name": target["name"],
            "executable": message["executable"],
            "package_dir": os.path.dirname(message["manifest_path"]),
            "arguments": [],
        }
        if target["name"] == SUITE:
            binaries.extend(suite_modules(binary))
        else:
            binaries.append(binary)
    return binaries


def suite_modules(binary):
    """One entry per top-level module of the suite binary, running exactly that module's tests."""
    listed = subprocess.run(
        [binary["executable"], "--list", "--format", "terse"],
        cwd=binary["package_dir"],
        env=dict(os.environ, CARGO_MANIFEST_DIR=binary["package_dir"]),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    modules = {}
    for line in listed.stdout.splitlines():
        name, _, kind = line.rpartition(": ")
        if kind != "test":
            continue
        modules.setdefault(name.split("::", 1)[0], []).append(name)
    return [
        dict(
            binary,
            display=f"{binary['display']}: {module}",
            name=module,
            arguments=["--exact", *names],
        )
        for module, names in sorted(modules.items())
    ]


def run(binary):
    """Runs one test binary with its output in a file; returns (binary, code, seconds, output)."""
    executable = os.path.relpath(binary["executable"], os.getcwd())
    with PRINTING:
        print(f"     Running {binary['display']} ({executable})", flush=True)
    environment = dict(os.environ, CARGO_MANIFEST_DIR=binary["package_dir"])
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as output:
        code = subprocess.call(
            [binary["executable"], *binary["arguments"]],
            cwd=binary["package_dir"],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        output.seek(0)
        text = output.read()
    return binary, code, time.monotonic() - started, text


def report(result):
    """Prints a binary's verdict, time and output in one piece."""
    binary, code, seconds, text = result
    verdict = "ok" if code == 0 else f"FAILED (exit {code})"
    with PRINTING:
        print(f"---- {binary['display']}: {verdict} in {seconds:.1f} s", flush=True)
        sys.stdout.write(text)
        sys.stdout.flush()


def main():
    binaries = build()
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    side_by_side = sorted(
        (b for b in binaries if b["name"] not in ALONE),
        key=lambda b: (rank.get(b["name"], len(rank)), b["display"]),
    )
    alone = [b for b in binaries if b["name"] in ALONE]
    at_once = max(int(os.environ.get("TEST_BINARIES_AT_ONCE", "5")), 1)
    started = time.monotonic()
    results = []
    for binary in alone:
        results.append(run(binary))
        report(results[-1])
    print(f"==> side by side: {len(side_by_side)} test binaries, {at_once} at once", flush=True)
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        for finished in as_completed([pool.submit(run, b) for b in side_by_side]):
            results.append(finished.result())
            report(results[-1])
    print(f"\n{len(results)} test binaries in {time.monotonic() - started:.1f} s:")
    failed = []
    for binary, code, seconds, _ in sorted(results, key=lambda r: -r[2]):
        print(f"  {seconds:7.1f} s  {'ok' if code == 0 else 'FAILED'}  {binary['display']}")
        if code != 0:
            failed.append(binary["display"])
    if failed:
        print(f"error: {len(failed)} test binaries failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
