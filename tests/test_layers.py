"""The import contracts of .importlinter hold: core -> inference -> preference_sets -> stages, no stage imports
another, and no module of the pipeline imports the synthetic world, a plug-in (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports_command() -> str:
    """The import-linter CLI of this interpreter's environment (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.is_file() else shutil.which("lint-imports")
    assert found, "lint-imports not found: install the test extra (`pip install -e '.[test]'`, done by `make setup`)"
    return found


def test_import_contracts_hold():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([lint_imports_command(), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"import contracts broken:\n{result.stdout}\n{result.stderr}"
    assert "3 kept, 0 broken" in result.stdout, result.stdout
