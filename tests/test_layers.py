"""The dependency rule of docs/ARCHITECTURE.md, as import-linter contracts in setup.cfg."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_imports_keep_the_layers():
    """Every contract holds; a broken one is printed with the import chain that breaks it."""
    result = subprocess.run([str(LINT_IMPORTS), "--config", "setup.cfg", "--no-cache", "--no-logo"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
