"""The certified-training example runs end to end (briefly), where scikit-learn is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_certified_training_example_runs(tmp_path):
    pytest.importorskip("sklearn", reason="the example needs the 'examples' extra (scikit-learn)")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "certified_training.py"), "--epochs", "3",
                             "--verify", "2", "--timeout", "5", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("normal ", "certified "))]
    assert [row[0] for row in rows] == ["normal", "certified"]
    for row in rows:
        clean, pgd, crown, verified = map(float, row[1:5])
        assert 0 <= verified <= 1 and 0 <= crown <= clean and pgd <= clean
    assert (tmp_path / "training.png").stat().st_size > 0
