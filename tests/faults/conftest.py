"""The battery's shared fixtures, built once per session, and its counts per class at the end."""

from __future__ import annotations

import collections
import dataclasses
import os

import pytest

from .harness import CLASSES, Fixtures


@dataclasses.dataclass(frozen=True)
class Battery:
    """The scratch folder of the session (fixtures in ``base/fixtures``, cases in ``base/cases``)."""

    base: str
    fixtures: Fixtures


@pytest.fixture(scope="session")
def battery(tmp_path_factory) -> Battery:
    """Tiny models and ready-made runs on disk; this process's caches in the scratch folder, offline."""
    base = str(tmp_path_factory.mktemp("fault_battery"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", os.path.join(base, "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.delenv("CLIP_DINOISER_MAX_IMAGE_PIXELS", raising=False)
        yield Battery(base, Fixtures(base))


def pytest_terminal_summary(terminalreporter) -> None:
    """The cases of each class (``ok``, ``traceback``, ...), as the ``fault_class`` property records them."""
    counts: collections.Counter = collections.Counter()
    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) == "call":
                props = dict(getattr(report, "user_properties", ()))
                if "fault_class" in props:
                    counts[props["fault_class"]] += 1
                    if props.get("fault_group"):
                        groups[props["fault_group"]][props["fault_class"]] += 1
    for group in sorted(groups):
        terminalreporter.write_line(f"  {group}: " + "  ".join(f"{k}: {groups[group][k]}" for k in CLASSES)
                                    + f"  (of {sum(groups[group].values())})")
    if counts:
        terminalreporter.write_sep("-", "fault battery: " + "  ".join(f"{k}: {counts[k]}" for k in CLASSES)
                                   + f"  (of {sum(counts.values())})")
