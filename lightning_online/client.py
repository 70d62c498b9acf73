"""Client side for solver programs launched by :class:`~lightning_online.ExternalSolver`.

Three calls, the same in Python and in C (``csrc/lightning_online.h``)::

    from lightning_online import client

    theta = client.parameters()            # this run's parameters
    with client.connect() as run:          # connect to the training side
        for t in range(n_steps):
            ...                            # advance the solver
            run.send({"x": x, "y": field})  # one step: named numpy arrays
    # leaving the block closes the run; an exception inside it reports the run as failed

This module does not import MPI or torch. In an MPI program, either connect and send from one
rank (gather the fields there first), or let every rank send its share:
``client.connect(part=rank, n_parts=size)``; the training side concatenates each field along its
first axis in rank order (a rank without a share sends an array of first extent 0). The C library's sources ship with the package:
``python -m lightning_online.client --include`` prints the include directory and ``--source`` the
library's source file, for ``mpicc``; :func:`build` compiles a program with them. A Fortran
module over the C library ships too (``lightning_online.f90``, :func:`fortran_module`), and
Melissa's client calls (``melissa_api.h``; ``--cflags`` and ``--libs`` print the flags; see
docs/melissa.md).

Where code runs: inside the solver program (a process started by the rank's launch helper),
never in the training process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import ArrayLike

from lightning_online._wire import tcp as proto
from lightning_online._wire.tcp import ENV_ADDRESS, ENV_PARAMETERS, ENV_TOKEN

__all__ = [
    "Client",
    "build",
    "cflags",
    "connect",
    "fortran_module",
    "include_dir",
    "library_source",
    "libs",
    "melissa_dir",
    "melissa_library",
    "parameters",
]

_CSRC = Path(__file__).parent / "csrc"


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            f"{name} is not set: this program must be started by lightning_online's "
            "ExternalSolver (which sets it), or be given the value explicitly"
        )
    return value


def parameters() -> np.ndarray:
    """This run's parameters (float64), from ``LIGHTNING_ONLINE_PARAMETERS``."""
    text = _env(ENV_PARAMETERS)
    try:
        return np.array([float(v) for v in text.split(",")], dtype=np.float64)
    except ValueError as exc:
        raise RuntimeError(f"{ENV_PARAMETERS}={text!r} is not a comma-separated list") from exc


class Client:
    """An open connection of one run; use :func:`connect` to make one."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock
        self.steps_sent = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise RuntimeError("this run's connection is closed")
        return self._sock

    def _sendall(self, chunks: list[bytes | memoryview]) -> None:
        sock = self._socket()
        pending = [memoryview(c).cast("B") for c in chunks if len(c)]
        while pending:
            sent = sock.sendmsg(pending[:64])
            while sent:
                if sent >= len(pending[0]):
                    sent -= len(pending[0])
                    pending.pop(0)
                else:
                    pending[0] = pending[0][sent:]
                    sent = 0

    def send(self, fields: Mapping[str, ArrayLike]) -> None:
        """Send one time step: named arrays (numeric numpy dtypes; at most 16 fields, 8 dims).

        Blocks while the training side's buffer is full (backpressure).
        """
        arrays = {str(k): np.asarray(v) for k, v in fields.items()}
        self._sendall(proto.encode_step(self.steps_sent, arrays))
        self.steps_sent += 1

    def close(self) -> None:
        """Tell the training side the run is complete and close the connection."""
        if self._sock is not None:
            try:
                self._sendall([proto.encode_header(proto.CLOSE, 0, step=self.steps_sent)])
            finally:
                self._shutdown()

    def abort(self, message: str) -> None:
        """Report this run as failed (the message reaches the training log) and close."""
        if self._sock is not None:
            data = message.encode("utf-8", "replace")
            try:
                self._sendall([proto.encode_header(proto.ERROR, len(data)), data])
            except OSError:
                pass
            finally:
                self._shutdown()

    def _shutdown(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            detail = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self.abort(f"{detail}\n{''.join(traceback.format_tb(tb, limit=-3))}")


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``[v6]:port`` (``[::1]:5000``) or ``v6:port``."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or "[" in host or "]" in host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"address must be 'host:port' or '[v6 address]:port', got {address!r}")
    return host, int(port)


def connect(
    address: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    *,
    part: int = 0,
    n_parts: int = 1,
) -> Client:
    """Connect to the training side (defaults: ``LIGHTNING_ONLINE_ADDRESS`` and ``_TOKEN``).

    ``part``/``n_parts``: this sender's index among the run's senders (e.g. the MPI rank and
    size when every rank sends its share of each step)."""
    address = address or _env(ENV_ADDRESS)
    hello = proto.encode_hello(token or _env(ENV_TOKEN), part, n_parts)  # checks the part
    host, port = split_address(address)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)  # sends may block for long under backpressure; that is intended
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = Client(sock)
    client._sendall([hello])
    return client


# -- the C library, the Fortran module, Melissa's calls ---------------------------------------


def include_dir() -> Path:
    """Directory holding ``lightning_online.h`` (and the Fortran module ``lightning_online.f90``)."""
    return _CSRC


def library_source() -> Path:
    """The C library's single source file, compiled into the solver program."""
    return _CSRC / "lightning_online.c"


def fortran_module() -> Path:
    """The Fortran module ``lightning_online`` (ISO_C_BINDING over the C library), compiled
    before the program's own Fortran sources."""
    return _CSRC / "lightning_online.f90"


def melissa_dir() -> Path:
    """Directory holding ``melissa_api.h`` (Melissa's client calls over the C library), its
    source ``melissa_api.c`` and the Fortran interfaces ``melissa_api.f90``."""
    return _CSRC / "melissa"


def example_source(name: str) -> Path:
    """Source of a shipped example solver: ``"heat2d"`` (C, MPI), ``"heat2d_f"`` (Fortran),
    ``"melissa_heat"`` (C, MPI, Melissa's calls)."""
    for ext in (".c", ".f90"):
        path = _CSRC / "examples" / f"{name}{ext}"
        if path.exists():
            return path
    known = sorted(p.stem for p in (_CSRC / "examples").glob("*") if p.suffix in (".c", ".f90"))
    raise ValueError(f"no example solver {name!r}; known: {known}")


def _mpicc() -> str:
    beside = Path(sys.executable).parent / "mpicc"
    found = str(beside) if beside.exists() else shutil.which("mpicc")
    if found is None:
        raise FileNotFoundError("mpicc not found; pip install mpich (or load your MPI module)")
    return found


def _fortran_compiler() -> str:
    for name in (os.environ.get("FC"), "gfortran"):
        if name and shutil.which(name):
            return name
    raise FileNotFoundError(
        "no Fortran compiler: set FC or install gfortran (Debian/Ubuntu: apt-get install "
        "gfortran; macOS: brew install gcc)"
    )


def _is_fortran(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in (".f90", ".f95", ".f03", ".f08", ".f")


def _run_compiler(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"compilation failed: {' '.join(cmd)}\n{done.stdout}{done.stderr}")


def build(
    sources: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    compiler: str | None = None,
    flags: Sequence[str] | None = None,
    melissa: bool = False,
) -> Path:
    """Compile a solver program with the client library: ``mpicc -O2 -I<include> sources
    <library> -o output -lm``. The compiler defaults to the ``mpicc`` next to this Python (the
    ``mpich`` wheel's), else the one on PATH.

    Fortran sources (``.f90``): the compiler defaults to ``$FC``, else ``gfortran`` (give
    ``compiler="mpifort"`` for an MPI program), the flags to ``-O2 -ffp-contract=off``, and
    the Fortran module ``lightning_online`` is compiled first (its ``.mod`` file in a temporary
    folder); gfortran compiles the C library in the same command.

    ``melissa=True``: the program calls Melissa's API (``melissa_api.h``), whose source is
    compiled in as well. Raises ``RuntimeError`` with the compiler's output on failure."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fortran = any(_is_fortran(s) for s in sources)
    if flags is None:
        flags = ("-O2", "-ffp-contract=off") if fortran else ("-O2",)
    extra: list[str] = (
        [f"-I{melissa_dir()}", str(melissa_dir() / "melissa_api.c")] if melissa else []
    )
    with tempfile.TemporaryDirectory() as mods:
        if fortran:
            cmd = [compiler or _fortran_compiler(), *flags, f"-J{mods}", f"-I{include_dir()}"]
            cmd += [str(fortran_module())]
        else:
            cmd = [compiler or _mpicc(), *flags, f"-I{include_dir()}"]
        cmd += [*map(str, sources), *extra, str(library_source()), "-o", str(output), "-lm"]
        _run_compiler(cmd)
    return output


def _cache_root() -> Path:
    root = os.environ.get("LIGHTNING_ONLINE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lightning_online"


def cflags() -> list[str]:
    """Compile flags of a program that uses the C client or Melissa's API: the include
    folders of ``lightning_online.h`` and ``melissa_api.h`` (and ``melissa_api.f90``)."""
    return [f"-I{include_dir()}", f"-I{melissa_dir()}"]


def melissa_library(compiler: str | None = None) -> Path:
    """``libmelissa_api.a``: Melissa's client calls and the C client, compiled once with
    ``compiler`` (default: the ``mpicc`` of :func:`build`) into the cache folder
    (``$LIGHTNING_ONLINE_CACHE``, else ``~/.cache/lightning_online``), under a name that
    changes with the sources and the compiler. Returns its path."""
    cc = compiler or _mpicc()
    sources = [library_source(), melissa_dir() / "melissa_api.c"]
    digest = hashlib.sha256(cc.encode())
    for path in [*sources, include_dir() / "lightning_online.h", melissa_dir() / "melissa_api.h"]:
        digest.update(path.read_bytes())
    folder = _cache_root() / f"melissa-{digest.hexdigest()[:16]}"
    library = folder / "libmelissa_api.a"
    if library.exists():
        return library
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        objects = []
        for src in sources:
            obj = Path(tmp) / f"{src.stem}.o"
            _run_compiler([cc, "-O2", "-fPIC", *cflags(), "-c", str(src), "-o", str(obj)])
            objects.append(str(obj))
        _run_compiler(["ar", "rcs", str(Path(tmp) / library.name), *objects])
        staged = Path(tmp) / "lib"
        staged.mkdir()
        os.replace(Path(tmp) / library.name, staged / library.name)
        try:
            os.replace(staged, folder)  # atomic; another process may have won the race
        except OSError:
            if not library.exists():
                raise
    return library


def libs(compiler: str | None = None) -> list[str]:
    """Link flags of a program that calls Melissa's API: ``-L<folder> -lmelissa_api -lm``
    (builds :func:`melissa_library` when it is not there yet)."""
    return [f"-L{melissa_library(compiler).parent}", "-lmelissa_api", "-lm"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_online.client",
        description="Paths of the C client library, and a builder for solver programs.",
    )
    parser.add_argument("--include", action="store_true", help="print the include directory")
    parser.add_argument("--source", action="store_true", help="print the library's source file")
    parser.add_argument(
        "--cflags", action="store_true", help="print the compile flags (include folders)"
    )
    parser.add_argument(
        "--libs",
        action="store_true",
        help="print the link flags of Melissa's API (builds libmelissa_api.a once)",
    )
    parser.add_argument(
        "--build-example",
        metavar="NAME",
        help="compile a shipped example: heat2d (C, MPI), heat2d_f (Fortran, gfortran), "
        "melissa_heat (C, MPI, Melissa's API)",
    )
    parser.add_argument("-o", "--output", help="output path for --build-example")
    args = parser.parse_args(argv)
    if args.include:
        print(include_dir())
    if args.source:
        print(library_source())
    if args.cflags:
        print(" ".join(cflags()))
    if args.libs:
        print(" ".join(libs()))
    if args.build_example:
        out = args.output or args.build_example
        source = example_source(args.build_example)
        print(build([source], out, melissa=source.stem.startswith("melissa")))
    if not (args.include or args.source or args.cflags or args.libs or args.build_example):
        parser.print_help()


if __name__ == "__main__":
    main()
