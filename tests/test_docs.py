"""The documentation: every code sample of the guide pages runs, and what the docs state about the
code matches it. (The site itself is built strictly by ``mkdocs build --strict`` in .ci/run.)

The samples run as a user would run them: one script per page (its Python blocks in order), in a
subprocess whose PATH lacks the environment's ``bin/``.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_online

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = ["gpus.md", "choosing.md", "reproducibility.md", "troubleshooting.md"]


def _blocks(page: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / page).read_text(), re.S)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(["/usr/bin", "/bin"])  # no environment bin/ on PATH
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.mark.timeout(240)
@pytest.mark.parametrize("page", PAGES)
def test_code_samples_of_the_guide_pages_run(page: str, tmp_path: Path) -> None:
    python = _blocks(page, "python")
    shell = _blocks(page, "bash")
    assert python or shell, f"{page} has no code sample"
    if python:
        script = tmp_path / "sample.py"
        script.write_text("\n".join(python))
        out = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=200,
        )
        assert out.returncode == 0, f"{page}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    for block in shell:
        for line in block.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            cmd = line.split("#")[0].split()
            assert cmd[0] == "python", f"{page}: only `python ...` shell lines are run: {line}"
            out = subprocess.run(
                [sys.executable, *cmd[1:]], env=_env(), capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0, f"{page}: {line}\n{out.stderr[-2000:]}"


def test_sends_in_flight_per_worker_as_the_code_says() -> None:
    from lightning_online._transport.worker import _WINDOW

    for path in [ROOT / "README.md", DOCS / "concepts.md"]:
        said = re.findall(r"at most (\d+) messages in flight", path.read_text())
        assert said and all(int(n) == _WINDOW for n in said), (path.name, said, _WINDOW)


def test_documented_checkpoint_option_exists_in_every_allowed_lightning() -> None:
    """fault-tolerance.md relies on ModelCheckpoint(save_on_exception=True), added in Lightning
    2.5.3: pyproject must not allow an older Lightning."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    if "save_on_exception" in (DOCS / "fault-tolerance.md").read_text():
        assert "save_on_exception" in inspect.signature(ModelCheckpoint).parameters
        low = re.search(r'"lightning>=([\d.]+)', (ROOT / "pyproject.toml").read_text())
        assert low is not None
        assert tuple(int(p) for p in low.group(1).split(".")) >= (2, 5, 3)


def test_api_reference_covers_every_public_name() -> None:
    api = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    for public in lightning_online.__all__:
        assert re.search(rf"\b{public}\b", api), f"docs/api/ does not mention {public}"


def test_every_new_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in [*PAGES, "api/index.md"]:
        assert page in nav, page
