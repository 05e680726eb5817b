"""Fixtures shared by every test package: the QUIC core the transport runs on.

The transport and session suites take their configs from fixtures that depend on
``core``, so each of their tests runs once per installed core: ``aioquic``
always, ``qh3`` when it is installed (``pip install 'quicframe[qh3]'``).
``pytest --core aioquic`` (or ``qh3``) runs one core only.  Tests of a feature
only the aioquic core has are marked ``@pytest.mark.aioquic_only``: they run on
aioquic only (and are deselected by ``--core qh3``), never skipped.
"""

from __future__ import annotations

import importlib.util

import pytest

INSTALLED_CORES = ["aioquic"] + (["qh3"] if importlib.util.find_spec("qh3") else [])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--core",
        action="append",
        choices=["aioquic", "qh3"],
        help="run the transport and session tests on this QUIC core only (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "aioquic_only(reason): the test needs a feature only the aioquic core has"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "core" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("core") or INSTALLED_CORES
        if metafunc.definition.get_closest_marker("aioquic_only") is not None:
            # Not generated for the other cores at all (rather than skipped there):
            # the feature does not exist on them (docs/transport.md, "Cores").
            chosen = [name for name in chosen if name == "aioquic"]
            if not chosen:
                return  # deselected in pytest_collection_modifyitems
        metafunc.parametrize("core", chosen, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("core")
    if not chosen or "aioquic" in chosen:
        return
    keep = [item for item in items if item.get_closest_marker("aioquic_only") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
