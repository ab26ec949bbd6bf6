"""The layers of CONVENTIONS.md, enforced on every import of the project's packages.

api, jobs -> wallets -> grants -> ledger, never upward, api and jobs never each other; only
`ledger/types.py` imports tigerbeetle, only `api` imports litestar, only `jobs` imports
apscheduler. The Python client (clients/python, a distribution of its own) imports nothing but
the standard library, httpx and msgspec.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledger", "grants", "wallets", "finance", "api", "jobs", "cli")
ALLOWED: dict[str, set[str]] = {
    "ledger": {"ledger"},
    "grants": {"grants", "ledger"},
    "wallets": {"wallets", "grants", "ledger"},
    "finance": {"finance", "wallets", "grants", "ledger"},
    "api": {"api", "finance", "wallets", "grants", "ledger"},
    "jobs": {"jobs", "finance", "wallets", "grants", "ledger"},
    # The command line composes the processes: it may join the two edges.
    "cli": {"cli", "api", "jobs", "finance", "wallets", "grants", "ledger"},
}
EXTERNAL_OWNERS = {"tigerbeetle": "ledger/types.py", "litestar": "api", "apscheduler": "jobs"}


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_the_layers(path: Path) -> None:
    relative = path.relative_to(ROOT).as_posix()
    package = relative.split("/")[0]
    imported = _imports(path)
    upward = (imported & set(PACKAGES)) - ALLOWED[package]
    assert not upward, f"{relative} imports {sorted(upward)} across the layers"
    for external, owner in EXTERNAL_OWNERS.items():
        if external in imported:
            assert relative == owner or relative.startswith(owner + "/"), (
                f"{relative} imports {external}; only {owner} may"
            )


def test_the_check_sees_the_modules() -> None:
    assert ROOT.joinpath("ledger/types.py") in _modules()
    assert "tigerbeetle" in _imports(ROOT / "ledger" / "types.py")


CLIENT = ROOT / "clients" / "python" / "credit_ledger_client"
CLIENT_DEPENDENCIES = {"credit_ledger_client", "httpx", "msgspec", "__future__"}


@pytest.mark.parametrize("path", sorted(CLIENT.rglob("*.py")), ids=lambda p: p.name)
def test_the_client_imports_only_its_own_dependencies(path: Path) -> None:
    imported = _imports(path) - set(sys.stdlib_module_names)
    assert imported <= CLIENT_DEPENDENCIES, f"{path.name} imports {sorted(imported)}"


def test_the_client_check_sees_the_client() -> None:
    assert CLIENT.joinpath("client.py") in CLIENT.rglob("*.py")
    assert "httpx" in _imports(CLIENT / "client.py")
