"""constraints.txt (the exact versions tested) against pyproject.toml (the ranges users may install)."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _locked() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version and not re.search(r"[<>~!,;]", line), f"constraints.txt: {line!r} is not NAME==VERSION"
            out[canonicalize_name(name)] = Version(version)
    return out


def test_every_declared_dependency_is_locked_inside_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in ("serve", "dev", "docs") for r in project["optional-dependencies"][extra]]
    for req in declared:
        if canonicalize_name(req.name) == "tunekit":  # tunekit[serve] inside dev
            continue
        version = locked.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is declared in pyproject.toml but not locked in constraints.txt"
        assert req.specifier.contains(version, prereleases=True), f"constraints.txt has {req.name}=={version}, outside {req}"


def test_the_makefile_installs_with_the_lock_and_pins_torch():
    setup = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line and "[dev]" in line)
    assert "-c constraints.txt" in setup and f"torch=={_locked()['torch']}" in setup
