"""The history-size sweep (`python -m bench.engine_history`) runs end to end on a small size and
reports a row of figures that hang together (no timing is asserted: speed is the benchmark's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_sweep_prints_a_row_per_size_and_leaves_nothing_behind(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.engine_history", "--sizes", "0.02", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split()[:3] == ["transfers", "RSS", "MiB"]
    row = lines[2].split()
    # 20,000 transfers asked: three full batches of 8189.
    assert row[0] == "24,567"
    rss, disk, start_s = (float(v.replace(",", "")) for v in row[1:4])
    # Bytes per transfer: at this small size mostly the history store's 32 MiB id filter.
    assert rss > 0 and 16 <= disk <= 4096 and start_s >= 0
    assert "filled 24,567 transfers" in done.stderr
    assert list(tmp_path.iterdir()) == []  # the data directories are removed
