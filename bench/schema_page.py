"""Renders the API reference page (/schema) in headless Chromium with every host but the
service's unreachable, as on a machine without internet, and reports what the page shows: the
operations Swagger UI listed, and any address on another host left in the rendered page.

    python -m bench.schema_page --url http://127.0.0.1:8080

Needs Debian's chromium (apt-get install chromium). Not a test: tests/api/test_e2e_serve.py
runs `render_offline` against the service it starts.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass

# Chromium runs the page's scripts until they are idle, up to this much (virtual) time.
RENDER_BUDGET_MS = 15_000
RENDER_TIMEOUT_S = 120


@dataclass(frozen=True)
class Rendering:
    operations: list[str]  # the path of each operation Swagger UI rendered, in page order
    elsewhere: set[str]  # src and href addresses on another host
    dom_bytes: int


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render_offline(url: str) -> Rendering:
    """The page at `url`/schema as Chromium renders it when only `url`'s host resolves."""
    browser = chromium()
    assert browser is not None, "chromium is not installed (apt-get install chromium)"
    host = urllib.parse.urlsplit(url).hostname
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                # No other host resolves: what the page needs from the internet never loads.
                f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
                f"--virtual-time-budget={RENDER_BUDGET_MS}",
                "--dump-dom",
                f"{url}/schema",
            ],
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT_S,
            check=True,
        )
    # The page embeds the OpenAPI document in a script: only what is outside scripts was
    # rendered.
    rendered = re.sub(r"<script\b.*?</script>", "", result.stdout, flags=re.S)
    operations = re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', rendered)
    addresses = re.findall(r'(?:src|href)="(https?://[^"]+)"', rendered)
    elsewhere = {a for a in addresses if urllib.parse.urlsplit(a).hostname != host}
    return Rendering(operations, elsewhere, len(result.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description="Render /schema offline in headless Chromium.")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    args = parser.parse_args()
    if chromium() is None:
        sys.exit("bench.schema_page needs chromium on PATH (Debian: apt-get install chromium)")
    rendering = render_offline(args.url)
    print(f"{args.url}/schema, rendered offline: {rendering.dom_bytes} bytes of DOM")
    print(f"{len(rendering.operations)} operations listed:")
    for path in rendering.operations:
        print(f"  {path}")
    print(f"addresses on other hosts: {sorted(rendering.elsewhere) or 'none'}")


if __name__ == "__main__":
    main()
