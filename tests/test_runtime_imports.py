"""Apps embed runtime/: importing it must not pull torch or transformers."""

import subprocess
import sys


def test_import_runtime_pulls_no_torch_or_transformers():
    code = ("import sys, runtime; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
