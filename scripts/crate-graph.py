#!/usr/bin/env python3
"""Fails when a crate of the workspace depends on one it must not (DESIGN.md, "Crates").

Each workspace crate lists the workspace crates it may depend on, and the crates.io crates its
build must never pull in, directly or through another crate (dev-dependencies aside: tests may
use more). Reads `cargo metadata`, so it needs no build.
"""

import json
import subprocess
import sys

# Workspace crates each crate may depend on. The bench measures everything; the binary uses
# everything.
LIBRARIES = {
    "campaign-core",
    "campaign-generator",
    "campaign-kafka",
    "campaign-tables",
    "campaign-serve",
    "campaign-tools",
    "campaign-http",
    "campaign-collect",
}
ALLOWED = {
    "campaign-generator": set(),
    "campaign-core": set(),
    "campaign-kafka": {"campaign-core", "campaign-generator"},
    "campaign-tables": {"campaign-core"},
    "campaign-serve": {"campaign-core", "campaign-http"},
    "campaign-http": set(),
    "campaign-collect": {"campaign-core", "campaign-kafka", "campaign-http"},
    "campaign-tools": {"campaign-core", "campaign-kafka"},
    "campaign-bench": LIBRARIES,
    "campaign-pipeline": LIBRARIES | {"campaign-bench"},
}

KAFKA = {"rdkafka", "rdkafka-sys"}
SERVERS = {"axum", "datafusion-postgres", "pgwire"}
# The command line and the binary's allocator belong to the binary alone.
BINARY = {"clap", "rustyline", "indicatif", "tikv-jemallocator"}
# What the streaming core must not reach: Kafka's client, the servers, the command line.
CORE_NEVER = KAFKA | SERVERS | BINARY
FORBIDDEN = {
    "campaign-core": CORE_NEVER,
    "campaign-generator": CORE_NEVER,
    # The tables' setup and maintenance are Iceberg only.
    "campaign-tables": CORE_NEVER,
    # Kafka's crate runs the core on Kafka; the dead letter tools read and write topics.
    "campaign-kafka": SERVERS | BINARY,
    "campaign-tools": SERVERS | BINARY,
    # The readers serve over HTTP and the PostgreSQL protocol, and never touch Kafka.
    "campaign-serve": KAFKA | BINARY,
    "campaign-bench": BINARY,
    # The HTTP servers' front door knows neither Kafka, the tables nor the SQL engine.
    "campaign-http": KAFKA | BINARY | {"datafusion", "iceberg"},
    # The collector writes to Kafka over HTTP and serves no SQL.
    "campaign-collect": BINARY | {"datafusion-postgres", "pgwire"},
}


def main() -> int:
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in metadata["packages"]}
    members = {packages[i]["name"]: i for i in metadata["workspace_members"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}

    def runtime_deps(node_id):
        """Dependencies a build of the crate compiles (normal and build, not dev)."""
        for dep in nodes[node_id]["deps"]:
            if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
                yield dep["pkg"]

    problems = []
    unknown = set(members) - set(ALLOWED)
    for name in sorted(unknown):
        problems.append(f"{name}: a workspace crate with no rule in scripts/crate-graph.py")
    for name, allowed in ALLOWED.items():
        if name not in members:
            problems.append(f"{name}: has a rule but is not a workspace crate")
            continue
        direct = {packages[d]["name"] for d in runtime_deps(members[name])}
        for dep in sorted((direct & set(members)) - allowed):
            problems.append(f"{name} depends on {dep}, which it must not")
        never = FORBIDDEN.get(name, set())
        seen, stack = set(), [members[name]]
        while stack:
            for dep in runtime_deps(stack.pop()):
                if dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        for dep in sorted({packages[d]["name"] for d in seen} & never):
            problems.append(f"{name} pulls in {dep}, which it must not (directly or through a dependency)")
    for problem in problems:
        print(f"crate graph: {problem}", file=sys.stderr)
    if not problems:
        print(f"crate graph: {len(ALLOWED)} crates depend only on what they may")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
