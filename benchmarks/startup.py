"""How long `digest` takes to start: `digest --help`, `digest status` and `digest profile
validate`, each run as a subprocess as a user runs it, in a scratch project (`digest init`
and the bundled digest files ingested).

The baselines, measured in the same run so that the figures survive a busy machine: the
interpreter alone (`python -c pass`) and the interpreter importing click (the floor of any
click program). Each command's median wall time over N runs is printed beside them, then,
from one run of each command with `-X importtime`, the packages that took longest to
import and digest's own slowest modules. Bytecode is cached (in the scratch folder), as
it is for an installed digest.

    python benchmarks/startup.py [--runs 15] [--top 8]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "digest" / "data" / "seeds"
BASELINES: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import click'": [sys.executable, "-c", "import click"],
}
COMMANDS: dict[str, list[str]] = {
    "digest --help": ["--help"],
    "digest status": ["status"],
    "digest profile validate": ["profile", "validate"],
}
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def digest_command() -> list[str]:
    """`digest` as a user runs it: the console script beside this Python (it imports this
    checkout, first on PYTHONPATH), else `python -m digest`."""
    script = Path(sys.executable).with_name("digest")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "digest"]


def environment(scratch: Path) -> dict[str, str]:
    """This checkout importable, its bytecode cached (in `scratch`, as an installed digest
    has it); no config or database from the caller's environment."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DIGEST_") and key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    return env


def median_wall(command: Sequence[str], runs: int, cwd: Path, env: dict[str, str]) -> float:
    """The median wall time of `runs` runs, after one untimed run (warms the disk cache)."""
    subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=True)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def top_imports(command: Sequence[str], cwd: Path, env: dict[str, str], top: int
                ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From `python -X importtime`: the `top` slowest packages to import (their first
    import, what they import included), and digest's own slowest modules (their own time:
    what runs as they load, such as pydantic building the settings' models)."""
    done = subprocess.run(command, cwd=cwd, env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
                          capture_output=True, text=True, check=True)
    packages: dict[str, float] = {}
    own: dict[str, float] = {}
    for match in LINE.finditer(done.stderr):
        self_us, cumulative_us, _indent, name = match.groups()
        if "." not in name and not name.startswith("_") and name != "digest":
            packages[name] = max(packages.get(name, 0.0), int(cumulative_us) / 1e6)
        elif name.startswith("digest."):
            own[name] = int(self_us) / 1e6
    return (sorted(packages.items(), key=lambda item: -item[1])[:top],
            sorted(own.items(), key=lambda item: -item[1])[:top // 2])


def make_project(folder: Path, env: dict[str, str]) -> None:
    digest = [sys.executable, "-m", "digest"]
    subprocess.run([*digest, "init", str(folder)], env=env, capture_output=True, check=True)
    subprocess.run([*digest, "ingest", *map(str, sorted(SEEDS.glob("*.txt"))),
                    "--date", "2026-03-11"], cwd=folder, env=env, capture_output=True,
                   check=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command")
    parser.add_argument("--top", type=int, default=8, help="packages listed per command")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        env = environment(Path(scratch))
        project = Path(scratch) / "papers"
        env["XDG_DATA_HOME"] = str(Path(scratch) / "xdg")  # nothing of the user's is read
        make_project(project, env)
        print(f"median wall time of {args.runs} runs ({os.cpu_count()} cores; "
              f"load {os.getloadavg()[0]:.2f})")
        for name, command in BASELINES.items():
            print(f"  {median_wall(command, args.runs, project, env):6.3f} s  {name}")
        for name, rest in COMMANDS.items():
            command = [*digest_command(), *rest]
            print(f"  {median_wall(command, args.runs, project, env):6.3f} s  {name}")
        print("slowest imports (s, from one run with -X importtime, which slows it down)")
        for name, rest in COMMANDS.items():
            command = [*digest_command(), *rest]
            packages, own = top_imports(command, project, env, args.top)
            print(f"  {name}: " + ", ".join(f"{p} {s:.3f}" for p, s in packages))
            print(f"  {' ' * len(name)}  digest's own: "
                  + ", ".join(f"{p} {s:.3f}" for p, s in own))


if __name__ == "__main__":
    main()
