"""Benchmark several commits with asv in the current environment (no network needed).

asv refuses commit ranges in an existing environment, so for every commit this
script checks it out into a temporary git worktree, installs it into the
running environment without dependencies, and records a run with
``asv run -E existing:same --set-commit-hash <sha>``. Then it compares the first
and last commits (``asv compare``) and builds the HTML report (``asv publish``).
The benchmark code is always this checkout's ``asv_benchmarks/benchmarks`` (it
uses only the public API), and the checkout's own version is reinstalled at
the end.

Example, from the repository root, on a GPU machine::

    python asv_benchmarks/track_commits.py HEAD~2 HEAD~1 HEAD --bench DeviceTime

Arguments after ``--`` go to ``asv run`` (e.g. ``-- -a repeat=3``). asv's
``--quick`` mode saves no results, so it is of no use here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def sh(*cmd: str, cwd: Path = HERE, capture: bool = False) -> str:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=cwd, check=True, text=True, capture_output=capture)
    return result.stdout if capture else ""


def install(source: Path, *, editable: bool = False) -> None:
    target = ["-e", str(source)] if editable else [str(source)]
    sh(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", *target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commits", nargs="+", help="commits to benchmark, oldest first (any git revision)")
    parser.add_argument("--bench", action="append", default=[], help="benchmark regex (repeatable)")
    parser.add_argument("--factor", default="1.1", help="asv compare: ratio that counts as a change")
    parser.add_argument("--only-changed", action="store_true", help="asv compare: list only the changes")
    parser.add_argument("--compare-out", type=Path, help="also write the comparison to this file")
    args, asv_extra = parser.parse_known_args(argv)
    asv_extra = [a for a in asv_extra if a != "--"]

    shas = [sh("git", "rev-parse", c, cwd=ROOT, capture=True).strip() for c in args.commits]
    if not (Path.home() / ".asv-machine.json").exists():
        sh("asv", "machine", "--yes")
    bench = [x for b in args.bench for x in ("--bench", b)]
    try:
        for sha in shas:
            worktree = Path(tempfile.mkdtemp(prefix=f"shtopk-{sha[:8]}-"))
            try:
                sh("git", "worktree", "add", "--detach", str(worktree), sha, cwd=ROOT)
                install(worktree)
                sh(
                    "asv",
                    "run",
                    "-E",
                    "existing:same",
                    "--set-commit-hash",
                    sha,
                    "--show-stderr",
                    *bench,
                    *asv_extra,
                )
            finally:
                sh("git", "worktree", "remove", "--force", str(worktree), cwd=ROOT)
                shutil.rmtree(worktree, ignore_errors=True)
    finally:
        install(ROOT, editable=True)  # back to this checkout, as a development install
    layout = ["--only-changed"] if args.only_changed else ["--split"]
    compare = ["asv", "compare", "--factor", args.factor, *layout, "--sort", "ratio"]
    comparison = sh(*compare, shas[0], shas[-1], capture=True)
    print(comparison)
    if args.compare_out:
        args.compare_out.write_text(comparison)
    sh("asv", "publish")


if __name__ == "__main__":
    main()
