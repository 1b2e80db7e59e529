"""What a version is called: `<family>-YYYYMMDD-HHMM[-n]`, and its MAJOR.MINOR.PATCH label.

A name is checked whole (`re.fullmatch`): no `/`, no `..`, no trailing newline can pass, so a
name is always safe as a path part and an object-store key.
"""

from __future__ import annotations

import datetime as dt
import math
import re

from pulse_pipeline.core.registry.errors import NameError_

FAMILY = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
VERSION = re.compile(
    r"(?P<family>[a-z0-9]+(?:-[a-z0-9]+)*)-(?P<day>\d{8})-(?P<time>\d{4})(?:-(?P<n>[2-9]|[1-9]\d+))?"
)
_LABEL = re.compile(r"(\d+)\.(\d+)\.(\d+)")
NEW_EXAMPLES_MINOR = 0.10  # more new examples than this share bumps the minor label


def version_name(family: str, when: dt.datetime, n: int = 1) -> str:
    base = f"{family}-{when.astimezone(dt.UTC):%Y%m%d-%H%M}"
    return base if n == 1 else f"{base}-{n}"


def is_family(name: str) -> bool:
    return isinstance(name, str) and FAMILY.fullmatch(name) is not None


def is_version_of(family: str, version: str) -> bool:
    """Whether `version` is a well-formed version name of `family` (no path tricks can pass)."""
    m = VERSION.fullmatch(version) if isinstance(version, str) else None
    return bool(m) and m.group("family") == family


def check_version(family: str, version: str) -> str:
    """`version`, or NameError_ naming it."""
    if not is_family(family):
        raise NameError_(f"{family!r} is not a family name (lowercase letters, digits and dashes)")
    if not is_version_of(family, version):
        raise NameError_(f"{version!r} is not a version name of family {family} ({family}-YYYYMMDD-HHMM)")
    return version


def order(version: str) -> tuple[str, str, int]:
    """Sort key: by minute, then the same minute's -2, -3 ..."""
    m = VERSION.fullmatch(version)
    if m is None:
        raise NameError_(f"{version!r} is not a version name")
    return m.group("day"), m.group("time"), int(m.group("n") or 1)


def semantic_label(
    previous_label: str | None, previous_base_model: str | None, base_model: str, new_example_share: float
) -> str:
    """The ACCESS-style MAJOR.MINOR.PATCH label of a new version: "1.0.0" for a family's first;
    major when the base model changes, minor when more than 10 % of the examples are new, patch
    otherwise."""
    if not 0.0 <= new_example_share <= 1.0 or math.isnan(new_example_share):
        raise ValueError(f"new example share must be between 0 and 1, not {new_example_share}")
    if previous_label is None:
        return "1.0.0"
    m = _LABEL.fullmatch(previous_label)
    if not m:
        raise ValueError(f"previous version's semantic_version {previous_label!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in m.groups())
    if base_model != previous_base_model:
        return f"{major + 1}.0.0"
    if new_example_share > NEW_EXAMPLES_MINOR:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"
