"""The wire constants have one home (``lightning_online._wire``): the C client, which cannot import
them, is held against them here, and nothing else in the package restates a header offset."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from lightning_online._wire import samples, tcp
from lightning_online.client import include_dir, library_source

PKG = Path(__file__).resolve().parents[1] / "lightning_online"


def _defines(*paths: Path) -> dict[str, str]:
    out = {}
    for path in paths:
        for name, value in re.findall(r"^#define\s+(\w+)\s+(\S+)", path.read_text(), re.M):
            out[name] = value
    return out


C = _defines(Path(include_dir()) / "lightning_online.h", Path(library_source()))


def _int(text: str) -> int:
    return int(text.rstrip("uU"), 0)


@pytest.mark.parametrize(
    ("c_name", "value"),
    [
        ("LO_MAGIC", tcp.MAGIC),
        ("LO_VERSION", tcp.VERSION),
        ("LO_HELLO", tcp.HELLO),
        ("LO_STEP", tcp.STEP),
        ("LO_CLOSE", tcp.CLOSE),
        ("LO_ERROR", tcp.ERROR),
        ("LO_HEADER_BYTES", tcp.HEADER.size),
        ("LO_DESC_BYTES", tcp.DESCRIPTOR.itemsize),
        ("LO_NAME_BYTES", tcp.NAME_BYTES),
        ("LO_N_DTYPES", len(samples.DTYPES)),
        ("LO_MAX_PARTS", tcp.MAX_PARTS),
        ("LO_MAX_FIELDS", samples.MAX_FIELDS),
        ("LO_MAX_DIMS", samples.MAX_DIMS),
    ],
)
def test_c_client_constant_agrees_with_the_wire(c_name: str, value: int) -> None:
    assert _int(C[c_name]) == value


def test_c_client_dtype_codes_are_the_wire_order() -> None:
    for i, dtype in enumerate(samples.DTYPES):
        assert _int(C[f"LO_{dtype.name.upper()}"]) == i, dtype


def test_c_client_environment_names_are_the_wire_names() -> None:
    for name in ("ENV_ADDRESS", "ENV_TOKEN", "ENV_PARAMETERS"):
        assert C[name].strip('"') == getattr(tcp, name)


def test_record_ids_reads_sim_id_and_step_of_encoded_samples() -> None:
    rows = [
        samples.encode_sample(sim, step, (np.arange(3, dtype=np.float32),))
        for sim, step in ((7, 0), (7, 1), (-3, 42))
    ]
    sims, steps = samples.record_ids(np.stack([np.asarray(r, dtype=np.uint8) for r in rows]))
    assert sims.tolist() == [7, 7, -3]
    assert steps.tolist() == [0, 1, 42]


def test_no_module_restates_the_sample_header_offsets() -> None:
    """Offsets into a sample record (``[:, 8:16]``, ``8:24``, a literal 32 for its header) are
    read through ``_wire.samples`` only."""
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.parent.name == "_wire":
            continue
        text = path.read_text()
        if re.search(r"\[[^\]]*\b8\s*:\s*(16|24)\]", text) or "HEADER_BYTES = 32" in text:
            offenders.append(str(path.relative_to(PKG)))
    assert not offenders
