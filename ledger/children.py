"""Our child processes (the engine, the checkpointer, the projection feed) run this
installation's code, wherever the service was started.

`python -m ledger.embedded` (or `-c "from ledger..."`) puts the working directory first on
`sys.path`: started in a directory that holds a `ledger` or `cli` directory of its own (a
common name: a user's project), a child imported that instead, and the engine could not start,
or the projection feed exited again and again while its lag grew; started in another checkout,
the server ran that checkout's engine. So each child runs with `-P` (Python 3.11: nothing is
put before `sys.path`), and, when this code is not installed in site-packages (an editable
install, a source tree run as it is), with its directory first on `PYTHONPATH`.
"""

from __future__ import annotations

import os
import site
import sys
from collections.abc import Mapping

# The directory that holds this installation's packages (ledger, cli, api, ...), as imported
# (not resolved: files installed as links into a cache are still in site-packages).
CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_command(*args: str) -> list[str]:
    """This interpreter on `args` (`-m module ...`, `-c code ...`), the working directory kept
    off `sys.path`."""
    return [sys.executable, "-P", *args]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (this process's by default) with this code's directory first on `PYTHONPATH`,
    unless it is a site-packages directory (the child finds it there anyway, and ahead of the
    standard library it could hide a module of it)."""
    out = dict(os.environ if env is None else env)
    sites = {os.path.abspath(p) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if CODE_ROOT in sites:
        return out
    rest = [
        p
        for p in out.get("PYTHONPATH", "").split(os.pathsep)
        if p and os.path.abspath(p) != CODE_ROOT
    ]
    out["PYTHONPATH"] = os.pathsep.join([CODE_ROOT, *rest])
    return out
