from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_offline_end_to_end(home: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "AIFUNCS_HOME": str(home)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "Registered models:/wine-classifier/1 as endpoint 'wine-classifier'" in out
    assert "│   178 │ 0.98" in out  # accuracy over every wine, scored from SQL
    assert out.count("ValueError: Input X contains NaN") == 2  # rows 0 and 4 of the six shown fail, alone
    assert "│ I love this wine, it tastes wonderful!       │ positive" in out  # task functions, offline
    assert "│ Far too expensive for what it is.            │ negative  │ price" in out
