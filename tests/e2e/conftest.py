"""What the e2e fixtures need to know about the test they served."""

from __future__ import annotations

from collections.abc import Generator

import pytest

# The report of a test's own body (its "call" phase), for fixtures whose teardown checks more only
# when the body passed (tests/e2e/test_web_ui.py: the pages it declares were photographed).
CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report
