"""`credit-ledger serve --test-clock` as a user runs it: the clock's instant survives a restart
(never earlier), a sandbox's data directory refuses the wall clock and the other way round, and
a real cluster refuses a test clock before anything starts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.api import served

CLI = served.CLI


def _run_serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "serve", "--port", str(served.free_port()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_clock_survives_a_restart_and_never_goes_back(tmp_path: Path) -> None:
    with served.serve(tmp_path, "--test-clock=2025-01-01T00:00:00Z") as service:
        headers = {"Authorization": f"Bearer {service.key}"}
        r = httpx.post(
            f"{service.url}/v1/test-clock/advance",
            json={"to": "2025-03-01T00:00:00Z"},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        assert r.headers["Test-Clock"] == "2025-03-01T00:00:00.000000000Z"
        # The engine's process reads it too: what it writes now is stamped on 2025-03-01.
        r = httpx.post(
            f"{service.url}/v1/credit-types",
            json={"code": "credits", "name": "Credits"},
            headers={**headers, "Idempotency-Key": "ct-1"},
        )
        assert r.status_code == 201, r.text
    # Started again with an earlier START: it resumes where it stood.
    with served.serve(tmp_path, "--test-clock=2025-01-01T00:00:00Z", key_name="again") as again:
        r = httpx.get(f"{again.url}/readyz")
        assert r.json()["test_clock"] == {"now": "2025-03-01T00:00:00.000000000Z"}
        assert r.headers["Test-Clock"] == "2025-03-01T00:00:00.000000000Z"
    # Without --test-clock, its data directory is refused, in one line.
    refused = _run_serve(served.env_for(tmp_path))
    assert refused.returncode == 1, refused.stderr
    assert "runs on a test clock" in refused.stderr and "Traceback" not in refused.stderr


def test_a_test_clock_is_refused_on_a_cluster_before_anything_starts(tmp_path: Path) -> None:
    env = {**served.env_for(tmp_path), "TB_ADDRESSES": "127.0.0.1:3999"}
    refused = _run_serve(env, "--test-clock")
    assert refused.returncode == 1
    assert "--test-clock needs the embedded engine" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_bad_start_is_a_usage_error(tmp_path: Path) -> None:
    refused = _run_serve(served.env_for(tmp_path), "--test-clock=2025-01-01T00:00:00")
    assert refused.returncode == 2
    assert "RFC 3339" in refused.stderr
