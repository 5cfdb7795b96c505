"""Shared pytest configuration: the `root` and `slow` markers, and network-namespace fixtures."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator

import pytest

from tests.netns import NetNS, NetNSCommandError, missing_tools

ROOT_REASON = "needs root and network namespaces"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests marked @pytest.mark.slow",
    )


@functools.cache
def root_skip_reason() -> str | None:
    """None if network-namespace tests can run here, else why not (checked once per session)."""
    if os.geteuid() != 0:
        return f"{ROOT_REASON} (not running as root)"
    missing = missing_tools()
    if missing:
        return f"{ROOT_REASON} (missing: {', '.join(missing)})"
    try:  # root in a container may still lack CAP_SYS_ADMIN / CAP_NET_ADMIN
        with NetNS(track=False):
            pass
    except (OSError, NetNSCommandError) as exc:
        return f"{ROOT_REASON} (cannot create one: {str(exc).strip().splitlines()[0]})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: run with --run-slow"))
        if "root" in item.keywords:
            reason = root_skip_reason()
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def netns_factory() -> Iterator[Callable[..., NetNS]]:
    """Make NetNS(**kwargs) namespaces (created already); all are deleted after the test."""
    reason = root_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    made: list[NetNS] = []

    def make(**kwargs: bool) -> NetNS:
        ns = NetNS(**kwargs)
        made.append(ns)
        return ns.create()

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


@pytest.fixture
def netns(netns_factory: Callable[..., NetNS]) -> NetNS:
    """A fresh namespace: lo up, nf_conntrack_acct=1, timestamps off, local traffic tracked."""
    return netns_factory()
