"""Coverage-guided fuzzing of quicframe's parsers with atheris (libFuzzer).

Usage (``nox -s fuzz`` runs the first form)::

    python tests/fuzz/run.py [--seconds N] [--jobs J] [--merge] [TARGET ...]
    python tests/fuzz/run.py --seed       # (re)write the seed inputs into the corpus
    python tests/fuzz/run.py --list

Each target of ``targets.py`` runs in a process of its own for ``--seconds``
(default: the ``QUICFRAME_FUZZ_SECONDS`` environment variable, else 10), starting
from ``tests/fuzz/corpus/<target>/``.  New inputs go to a scratch directory; with
``--merge`` the ones that add coverage are merged into the repository's corpus
(keep it small: inputs are capped at 4 KiB).  A crash, an unexpected exception or
an input that runs longer than ``--timeout`` seconds fails the run; libFuzzer
writes the input to ``.fuzz/<target>/`` at the repository root, and the traceback
is printed.  Replay a saved input with ``python tests/fuzz/run.py --replay TARGET FILE``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parents[1]
CORPUS: Final = HERE / "corpus"
ARTIFACTS: Final = ROOT / ".fuzz"
MAX_LEN: Final = 4096


def _child(target: str, argv0: str, libfuzzer_args: list[str]) -> None:
    """Run one target under atheris in this process (never returns)."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["quicframe", "tests.fuzz"]):
        from tests.fuzz.targets import TARGETS

    function = TARGETS[target]
    # argv[0] is the wrapper script: libFuzzer runs it again to merge corpora.
    atheris.Setup([argv0, *libfuzzer_args], function)
    atheris.Fuzz()


def _wrapper(directory: str, target: str) -> str:
    """An executable that runs ``target`` under libFuzzer with the arguments given."""
    path = Path(directory) / f"fuzz-{target}"
    path.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" --child {target} --argv0 "$0" -- "$@"\n',
        encoding="utf-8",
    )
    path.chmod(0o755)
    return str(path)


def _run_target(target: str, seconds: int, timeout: int, merge: bool) -> tuple[str, int, str]:
    seed_dir = CORPUS / target
    seed_dir.mkdir(parents=True, exist_ok=True)
    artifacts = ARTIFACTS / target
    artifacts.mkdir(parents=True, exist_ok=True)
    # The wrapper lives under .fuzz/ rather than in /tmp, which may be mounted noexec.
    wrapper = _wrapper(str(artifacts), target)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        command = [
            wrapper,
            scratch,
            str(seed_dir),
            f"-max_total_time={seconds}",
            f"-timeout={timeout}",
            f"-max_len={MAX_LEN}",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        output = result.stdout + result.stderr
        if result.returncode == 0 and merge:
            # Keep only the new inputs that add coverage to the repository's corpus.
            merged = subprocess.run(
                [wrapper, "-merge=1", f"-max_len={MAX_LEN}", str(seed_dir), scratch],
                capture_output=True,
                text=True,
                check=False,
            )
            output += merged.stdout + merged.stderr
    return target, result.returncode, output


def _summary(output: str) -> str:
    """libFuzzer's final statistics, on one line."""
    stats = {}
    for line in output.splitlines():
        if line.startswith("stat::"):
            key, _, value = line[len("stat::") :].partition(":")
            stats[key.strip()] = value.strip()
    runs = stats.get("number_of_executed_units", "?")
    return f"runs={runs} peak_rss_mb={stats.get('peak_rss_mb', '?')}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:
        # --child TARGET --argv0 WRAPPER -- LIBFUZZER-ARGS...
        _child(args[1], args[3], args[5:])
        return 0  # pragma: no cover - atheris.Fuzz() exits the process

    sys.path.insert(0, str(ROOT))
    from tests.fuzz.targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument(
        "--seconds",
        type=int,
        default=int(os.environ.get("QUICFRAME_FUZZ_SECONDS", "10")),
        help="fuzzing time per target (default: $QUICFRAME_FUZZ_SECONDS or 10)",
    )
    parser.add_argument("--timeout", type=int, default=5, help="seconds per input before a hang")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--merge", action="store_true", help="merge new coverage into the corpus")
    parser.add_argument("--seed", action="store_true", help="write the seed inputs and exit")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--replay", nargs=2, metavar=("TARGET", "FILE"))
    options = parser.parse_args(args)

    if options.list:
        print("\n".join(TARGETS))
        return 0
    if options.seed:
        from tests.fuzz.seeds import write_seeds

        print(f"{write_seeds()} new seed inputs written to {CORPUS}")
        return 0
    if options.replay:
        target, path = options.replay
        TARGETS[target](Path(path).read_bytes())
        print("no failure")
        return 0
    unknown = set(options.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {sorted(unknown)}")
    targets = options.targets or list(TARGETS)

    started = time.monotonic()
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        futures = [
            pool.submit(_run_target, target, options.seconds, options.timeout, options.merge)
            for target in targets
        ]
        for future in concurrent.futures.as_completed(futures):
            target, code, output = future.result()
            verdict = "ok" if code == 0 else f"FAILED (exit {code})"
            print(f"{target:16} {verdict:18} {_summary(output)}", flush=True)
            if code != 0:
                failed.append(target)
                print(output[-6000:], flush=True)
    elapsed = time.monotonic() - started
    print(f"{len(targets)} targets, {options.seconds} s each, {elapsed:.1f} s in all")
    if failed:
        print(f"failed: {', '.join(failed)} (inputs saved under {ARTIFACTS})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
