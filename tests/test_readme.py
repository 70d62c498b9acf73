"""The README's example runs as written (a user's first contact with the package)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.timeout(300)
def test_readme_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "trainer.fit(MLP(), dm)" in b)
    # Same code, smaller: fewer runs and no progress bar, so CI stays quick.
    example = example.replace("n_simulations=64", "n_simulations=8")
    example = example.replace(
        "pl.Trainer(max_steps=10_000,",
        "pl.Trainer(max_steps=10_000, enable_progress_bar=False, logger=False,"
        " enable_checkpointing=False,",
    )
    script = tmp_path / "first_fit.py"
    script.write_text(example)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'completed': 8" in out.stdout
