"""Developer tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``fuzz`` and ``soak``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (the README's test command runs this session)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check (with the ASYNC rules) and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src, tests, bench and this file (trio's own inline types)."""
    session.install("-e", ".[test]", "mypy==2.4.1", "nox>=2024.4")
    session.run("mypy", "--strict", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; never run by the tests.  Pass ``-- --quick`` for a short run."""
    session.install("-e", ".")
    session.run("python", "bench/wire_bench.py", *session.posargs)
    session.run("python", "bench/transport_bench.py", *session.posargs)
    session.run("python", "bench/pubsub_bench.py", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing of every parser of peer bytes (atheris), bounded.

    Seconds per target: ``nox -s fuzz -- --seconds 60`` or ``QUICFRAME_FUZZ_SECONDS``
    (default 10).  ``-- --merge`` adds the inputs that found new coverage to
    ``tests/fuzz/corpus/``; ``-- --list`` names the targets.  See tests/fuzz/run.py.
    """
    session.install("-e", ".", "atheris>=2.3")
    session.run("python", "tests/fuzz/run.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The soak of issue 8: 20 clients through the chaos proxy, one server restart.

    Two minutes by default; ``nox -s soak -- --minutes 10`` for a longer run
    (``-- --help`` lists the options).  Exits non-zero when an order ack was lost or
    repeated, a call failed with an untyped exception, or tasks, streams or memory
    did not come back to their baseline.  Not run by CI.  See bench/soak.py.
    """
    session.install("-e", ".")
    session.run("python", "bench/soak.py", *session.posargs)
