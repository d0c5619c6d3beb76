"""The wheel: every third-party module the installed packages import is a declared
dependency, and only the agent's packages are installed (not bench/ or tests/)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
INSTALLED = ["agent", "bridges", "control_api", "engines", "web_demo"]
FROM_SOURCE = {"melo"}  # MeloTTS is installed from its repository (README), behind the `melo` extra's torch


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def declared() -> set[str]:
    project = PYPROJECT["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project.get("optional-dependencies", {}).values():
        names |= {_name(r) for r in extra}
    return names


def imported_modules() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in INSTALLED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in INSTALLED + ["bench", "tests"]:
                        found.setdefault(name if top == "livekit" else top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_a_declared_dependency():
    distributions = md.packages_distributions()
    deps = declared()
    undeclared = []
    for module, where in sorted(imported_modules().items()):
        top = module.split(".")[0]
        if top in FROM_SOURCE:
            continue
        if top == "livekit":  # one namespace, three distributions: rtc, api, protocol
            dist = {"livekit.rtc": "livekit", "livekit.api": "livekit-api", "livekit.protocol": "livekit-protocol",
                    "livekit": "livekit"}[".".join(module.split(".")[:2])]
            candidates = [dist]
        else:
            candidates = [d.lower().replace("_", "-") for d in distributions.get(top, [])]
        assert candidates, f"{module} ({where}) is not installed in this environment"
        if not any(c in deps for c in candidates):
            undeclared.append(f"{module} ({where}) from {candidates}")
    assert undeclared == []


def test_aiortc_and_aioice_are_pinned_to_the_tested_minor_versions():
    pins = {_name(r): r for r in PYPROJECT["project"]["dependencies"]}
    for name in ("aiortc", "aioice"):
        major, minor = md.version(name).split(".")[:2]
        assert f">={major}.{minor}" in pins[name] and f"<{major}.{int(minor) + 1}" in pins[name], pins[name]


def test_the_wheel_installs_the_agent_not_the_benchmarks_or_tests():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(p.startswith(("bench", "tests")) for p in include), include
    assert all(any(p.startswith(pkg) for p in include) for pkg in INSTALLED), include
