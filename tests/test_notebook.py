"""The example notebook runs to its end in a real Jupyter kernel, as a user's kernel starts it:
the environment's ``bin/`` is not on the kernel's ``PATH`` (the package must still find MPI's
launcher, never abort the kernel)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "docs" / "notebooks"


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_orphans")
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_in_a_kernel_without_the_environment_on_path(path: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(["/usr/bin", "/bin"])
    env.pop("VIRTUAL_ENV", None)
    client = nbclient.NotebookClient(
        nb,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    probe = "import os, sys; print('KERNEL', sys.executable, os.environ['PATH'])"
    nb.cells.insert(0, nbformat.v4.new_code_cell(probe))
    client.execute(env=env, cwd=str(tmp_path))
    outputs = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
    )
    assert "largest rollout error" in outputs
    # The kernel was this environment's Python, with its bin/ off PATH.
    kernel = next(line for line in outputs.splitlines() if line.startswith("KERNEL"))
    _, executable, path = kernel.split(" ", 2)
    assert Path(executable).parent == Path(sys.executable).parent
    assert str(Path(sys.executable).parent) not in path.split(os.pathsep)
