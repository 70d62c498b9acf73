"""Installing and starting anywhere: metadata, and MPI found (or refused clearly) whatever PATH says.

The fits run in subprocesses whose PATH lacks the environment's ``bin/`` (how job scripts, IDEs
and Jupyter kernels often start ``/path/to/venv/bin/python``): MPI's singleton process manager
must still find the mpich wheel's ``mpiexec`` instead of aborting the process.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import lightning_online

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
BARE_PATH = os.pathsep.join(["/usr/bin", "/bin"])

pytestmark = pytest.mark.timeout(180)

FIT = textwrap.dedent(
    f"""
    import sys
    sys.path.insert(0, {str(TESTS)!r})
    import lightning.pytorch as pl
    from _models import Regressor
    from _solvers import Smooth
    from lightning_online import FIFO, OnlineDataModule, ParameterSpace

    if __name__ == "__main__":
        dm = OnlineDataModule(Smooth(n_steps=5), ParameterSpace([0, 0], [1, 1]),
                              n_simulations=4, n_workers=2, batch_size=4,
                              buffer=FIFO(capacity=64, watermark=4))
        trainer = pl.Trainer(max_steps=1000, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Regressor(3, 1), dm)
        print("completed", dm.stats["completed"])
    """
)


def _bare_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = BARE_PATH
    return env


def test_metadata_one_version_no_needless_pins() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("lightning-online") == lightning_online.__version__
    deps = {
        d.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip(): d
        for d in project["dependencies"]
    }
    assert "<" not in deps["torch"], "torch must not be capped by the package (CI pins it)"
    assert "torchdata" not in deps
    assert "sys_platform == 'linux'" in deps["mpich"]
    assert {"Homepage", "Repository", "Issues", "Documentation"} <= set(project["urls"])
    assert any(c.startswith("License :: OSI Approved :: Apache") for c in project["classifiers"])
    assert "Apache License" in (ROOT / "LICENSE").read_text()


@pytest.mark.skipif(sys.platform != "linux", reason="the mpich wheel's layout is checked on Linux")
def test_fit_without_the_environment_bin_on_path(tmp_path: Path) -> None:
    assert shutil.which("mpiexec", path=BARE_PATH) != shutil.which("mpiexec")
    script = tmp_path / "train.py"
    script.write_text(FIT)
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_bare_env(),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "completed 4" in out.stdout
    assert "Abort" not in out.stderr


@pytest.mark.skipif(
    shutil.which("mpiexec", path=BARE_PATH) is not None, reason="a system mpiexec is on PATH"
)
def test_no_mpi_at_all_is_refused_at_construction(tmp_path: Path) -> None:
    """An environment without the mpich wheel and no mpiexec on PATH: a clear error when the
    DataModule is built, naming the fix, instead of an abort in MPI_Comm_spawn later."""
    env_dir = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=60
    )
    # The packages of this environment, but not its prefix (whose bin/ holds the wheel's mpiexec).
    site = Path(sysconfig.get_paths()["purelib"])
    (next((env_dir / "lib").glob("python*")) / "site-packages" / "parent.pth").write_text(
        f"{site}\n{ROOT}\n"
    )
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from _solvers import Smooth
        from lightning_online import OnlineDataModule, ParameterSpace
        from lightning_online._util.mpienv import MPIUnavailableError
        try:
            OnlineDataModule(Smooth(), ParameterSpace([0], [1]), n_simulations=2)
        except MPIUnavailableError as exc:
            print("REFUSED", exc)
        """
    )
    out = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", code],
        env=_bare_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "REFUSED" in out.stdout and "pip install mpich" in out.stdout, out.stdout
