"""One test per case of the fault battery (``cases.py``): ``python -m pytest -q -m faults``."""

from __future__ import annotations

import re

import pytest

from .cases import CASES
from .harness import OK, detail, run_case

pytestmark = pytest.mark.faults


def case_id(key: str) -> str:
    """``tool/name`` with every run of characters that ``-k`` cannot take written ``_``."""
    return re.sub(r"[^\w+\-.\[\]/]+", "_", key).strip("_")


IDS = [case_id(c.key) for c in CASES]
assert len(set(IDS)) == len(IDS), "two cases of the battery have the same id"


@pytest.mark.parametrize(("number", "case"), list(enumerate(CASES, 1)), ids=IDS)
def test_fault(number, case, battery, request):
    outcome, ctx = run_case(battery.fixtures, case, number, battery.base)
    # properties of the test (--junitxml writes them; conftest.py counts the classes)
    request.node.user_properties += [("fault_class", outcome.klass), ("fault_message", outcome.message),
                                     ("fault_group", case.group)]
    if outcome.klass != OK:
        pytest.fail(detail(case, outcome, ctx), pytrace=False)
