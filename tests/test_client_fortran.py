"""The Fortran client (``csrc/lightning_online.f90``, ISO_C_BINDING over the C client) and the
Fortran example ``csrc/examples/heat2d_f.f90``, compiled with gfortran (``.ci/run`` installs
it) through :func:`lightning_online.client.build`, as a user would.

The example's stream must be bit for bit that of the C example ``heat2d.c`` (on 1 and on 3 MPI
ranks), both run through ``ExternalSolver``; the module's calls are checked against the small
TCP server of ``test_client_c``.
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from test_client_c import TOKEN, Receiver, assemble, environment, free_port, run

import lightning_online
from lightning_online import ExternalSolver, client
from lightning_online._wire import tcp as proto
from lightning_online.solvers.heat2d import Heat2D

ROOT = Path(__file__).resolve().parents[1]
CSRC = Path(lightning_online.__file__).parent / "csrc"
MPICC = Path(sys.executable).parent / "mpicc"

pytestmark = pytest.mark.timeout(240)

# A test program of the module: mode in argument 1; prints one line per check.
PROGRAM = r"""
program prog
    use lightning_online
    implicit none
    character(len=32) :: mode, arg
    type(c_ptr) :: c
    type(lo_step) :: step
    real(c_double) :: theta(4)
    real(c_float), target :: f32(5), empty(0)
    real(c_double), target :: f64(3, 2)
    integer(c_int32_t), target :: i32(4)
    integer(c_int64_t), target :: i64(2, 2)
    integer(c_int8_t), target :: i8(3)
    integer :: n, s, i, part, n_parts, rc

    call get_command_argument(1, mode)
    select case (trim(mode))
    case ('params')
        n = lo_get_parameters(theta)
        write (*, '(a,i0)') 'n|', n
        if (n < 0) write (*, '(a)') 'error|'//lo_error_message()
        do i = 1, max(n, 0)
            write (*, '(a,es26.17e3)') 'v|', theta(i)
        end do
    case ('send')
        c = lo_connect()
        if (.not. c_associated(c)) then
            write (*, '(a)') 'NULL|'//lo_error_message()
            stop 3, quiet=.true.
        end if
        do s = 0, 1
            f32 = [(real(i, c_float) + 0.5*s, i = 1, 5)]
            f64 = reshape([(real(10*i + s, c_double), i = 1, 6)], [3, 2])
            i32 = [(-7*i - s, i = 1, 4)]
            i64 = reshape([(int(i, c_int64_t)*2_c_int64_t**40 + s, i = 1, 4)], [2, 2])
            i8 = [int(-1 - s, c_int8_t), 0_c_int8_t, 127_c_int8_t]
            call lo_step_clear(step)
            call lo_step_add(step, 'f32', f32)
            call lo_step_add(step, 'f64', f64)
            call lo_step_add(step, 'i32', i32)
            call lo_step_add(step, 'i64', i64)
            call lo_step_add(step, 'empty', empty)
            call lo_step_add_raw(step, 'i8', LO_INT8, [3_c_int64_t], c_loc(i8))
            write (*, '(a,i0)') 'send|', lo_step_send(c, step)
        end do
        write (*, '(a,i0)') 'close|', lo_close(c)
    case ('errors')
        c = lo_connect()
        if (.not. c_associated(c)) stop 3
        call lo_step_clear(step)
        call lo_step_add(step, 'a_name_of_forty_eight_bytes_xxxxxxxxxxxxxxxxxxxx', f32)
        write (*, '(a,i0,a)') 'long|', lo_step_send(c, step), '|'//lo_error_message()
        call lo_step_clear(step)
        do i = 1, 17
            write (arg, '(a,i0)') 'f', i
            call lo_step_add(step, trim(arg), f32)
        end do
        write (*, '(a,i0,a)') 'many|', lo_step_send(c, step), '|'//lo_error_message()
        call lo_step_clear(step)
        call lo_step_add(step, 'a', f32)
        call lo_step_add(step, 'a', f32)
        write (*, '(a,i0,a)') 'duplicate|', lo_step_send(c, step), '|'//lo_error_message()
        call lo_step_clear(step)
        call lo_step_add_raw(step, 'bad', 99, [1_c_int64_t], c_loc(f32))
        write (*, '(a,i0,a)') 'dtype|', lo_step_send(c, step), '|'//lo_error_message()
        call lo_step_clear(step)
        f32 = 1.0
        call lo_step_add(step, 'good', f32)
        write (*, '(a,i0,a)') 'good|', lo_step_send(c, step), '|'//lo_error_message()
        write (*, '(a,i0)') 'close|', lo_close(c)
    case ('part')
        call get_command_argument(2, arg)
        read (arg, *) part
        call get_command_argument(3, arg)
        read (arg, *) n_parts
        c = lo_connect_part(part, n_parts)
        if (.not. c_associated(c)) then
            write (*, '(a)') 'NULL|'//lo_error_message()
            stop 3, quiet=.true.
        end if
        do s = 0, 2
            f64 = real(100*part + s, c_double)
            call lo_step_clear(step)
            call lo_step_add(step, 'rows', f64(:, 1:part + 1))
            rc = lo_step_send(c, step)
        end do
        write (*, '(a,i0)') 'close|', lo_close(c)
    case ('abort')
        c = lo_connect()
        if (.not. c_associated(c)) stop 3
        write (*, '(a,i0)') 'abort|', lo_abort(c, 'solver diverged at step 3')
    end select
end program prog
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("gfortran") is None:
        pytest.skip("no gfortran on this machine (.ci/run installs it: apt-get install gfortran)")
    if not MPICC.exists():
        pytest.skip(f"no mpicc next to {sys.executable} (install the mpich extra)")
    d = tmp_path_factory.mktemp("fortran")
    (d / "prog.f90").write_text(PROGRAM)
    strict = ["-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]
    return {
        "prog": client.build([d / "prog.f90"], d / "prog", flags=strict),
        # the documented way: python -m lightning_online.client --build-example NAME
        "heat2d_f": build_example("heat2d_f", d / "heat2d_f"),
        "heat2d": build_example("heat2d", d / "heat2d"),
    }


def build_example(name: str, out: Path) -> Path:
    from subprocess import run as sprun

    cmd = [sys.executable, "-m", "lightning_online.client", "--build-example", name, "-o", out]
    done = sprun([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == str(out)
    return out


def fields_of(out: str) -> dict[str, list[str]]:
    return {ln.split("|")[0]: ln.split("|")[1:] for ln in out.splitlines() if "|" in ln}


def test_steps_of_every_kind_arrive_intact(built):
    rx = Receiver()
    res = run([built["prog"], "send"], environment(f"127.0.0.1:{rx.port}"))
    (msgs,) = rx.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == ["send|0", "send|0", "close|0"]
    assert [(m[0], m[1]) for m in msgs] == [
        (proto.HELLO, 0),
        (proto.STEP, 0),
        (proto.STEP, 1),
        (proto.CLOSE, 2),
    ]
    assert msgs[0][2] == (0, 1, TOKEN.encode())
    for s, (_, _, fields) in enumerate(msgs[1:3]):
        assert isinstance(fields, dict)
        assert list(fields) == ["f32", "f64", "i32", "i64", "empty", "i8"]
        expected = {
            "f32": (np.arange(1, 6) + 0.5 * s).astype(np.float32),
            # a Fortran (3, 2) array arrives as the C-order (2, 3) array of the same bytes
            "f64": (10.0 * np.arange(1, 7) + s).reshape(2, 3),
            "i32": (-7 * np.arange(1, 5) - s).astype(np.int32),
            "i64": (np.arange(1, 5, dtype=np.int64) * 2**40 + s).reshape(2, 2),
            "empty": np.zeros(0, np.float32),
            "i8": np.array([-1 - s, 0, 127], np.int8),
        }
        for name, want in expected.items():
            got = fields[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_refused_steps_send_nothing_and_say_why(built):
    rx = Receiver()
    res = run([built["prog"], "errors"], environment(f"127.0.0.1:{rx.port}"))
    (msgs,) = rx.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    out = fields_of(res.stdout)
    assert out["long"][0] == "-1" and "must be 1 to 47 bytes" in out["long"][1]
    assert out["many"][0] == "-1" and "at most 16 fields" in out["many"][1]
    assert out["duplicate"][0] == "-1" and 'field name "a" appears twice' in out["duplicate"][1]
    assert out["dtype"][0] == "-1" and "unknown dtype code 99" in out["dtype"][1]
    assert out["good"][0] == "0" and out["close"] == ["0"]
    assert [(m[0], m[1]) for m in msgs] == [(proto.HELLO, 0), (proto.STEP, 0), (proto.CLOSE, 1)]


def test_parts_are_joined_in_part_order(built):
    rx = Receiver(n_parts=2)
    env = environment(f"127.0.0.1:{rx.port}")
    res = [run([built["prog"], "part", p, 2], env) for p in (1, 0)]
    for r in res:
        assert r.returncode == 0 and r.stdout.strip() == "close|0", r.stdout + r.stderr
    steps = assemble(rx.finish(), 3)
    for s, fields in enumerate(steps):
        # part p sends f64(:, 1:p+1): p+1 rows of 3 in C order
        want = np.concatenate([np.full((p + 1, 3), 100.0 * p + s) for p in range(2)])
        np.testing.assert_array_equal(fields["rows"], want)


def test_abort_and_parameters_and_no_listener(built):
    rx = Receiver()
    res = run([built["prog"], "abort"], environment(f"127.0.0.1:{rx.port}"))
    (msgs,) = rx.finish()
    assert res.stdout.strip() == "abort|0", res.stdout + res.stderr
    assert [m[0] for m in msgs] == [proto.HELLO, proto.ERROR]
    assert msgs[1][2] == "solver diverged at step 3"

    values = [123.5, -1e-300, 1 / 3]
    res = run([built["prog"], "params"], environment(params=",".join(map(repr, values))))
    out = res.stdout.splitlines()
    assert out[0] == "n|3" and [float(v.split("|")[1]) for v in out[1:]] == values
    res = run([built["prog"], "params"], environment(params="1,2,3,4,5"))
    assert "n|-1" in res.stdout and "more than 4 values" in res.stdout

    res = run([built["prog"], "send"], environment(f"127.0.0.1:{free_port()}"))
    assert (
        res.returncode == 3 and "NULL|lightning_online: cannot connect to 127.0.0.1:" in res.stdout
    )


THETA = np.array([300.0, 123.5, 480.25, 200.0, 410.0])
ARGS = ["--nx", "12", "--ny", "10", "--n-steps", "7"]


@pytest.mark.parametrize("c_ranks", [1, 3])
def test_heat2d_f_streams_what_heat2d_c_streams_bit_for_bit(built, c_ranks):
    """The Fortran port through ExternalSolver equals the C example on 1 or 3 MPI ranks, every
    step's every array byte for byte (and both equal the Python Heat2D)."""
    fortran = ExternalSolver(
        [str(built["heat2d_f"]), *ARGS], fields=["x", "y"], launcher="direct", n_steps=7
    )
    c = ExternalSolver(
        [str(built["heat2d"]), *ARGS, "--parts"], fields=["x", "y"], n_procs=c_ranks, n_steps=7
    )
    got_f, got_c = list(fortran(THETA)), list(c(THETA))
    python = list(Heat2D(nx=12, ny=10, n_steps=7)(THETA))
    assert len(got_f) == len(got_c) == 7
    for k, (a, b, p) in enumerate(zip(got_f, got_c, python, strict=True)):
        for name, u, v, w in zip("xy", a, b, p, strict=True):
            assert u.dtype == v.dtype == np.float32 and u.shape == v.shape, (k, name)
            assert u.tobytes() == v.tobytes(), (k, name)
            np.testing.assert_array_equal(u, w)


def test_heat2d_f_reports_bad_parameters_and_fail_at(built):
    rx = Receiver()
    res = run([built["heat2d_f"], "--nx", "4"], environment(f"127.0.0.1:{rx.port}", params="1,2"))
    (msgs,) = rx.finish()
    assert res.returncode == 1 and "expected 5 parameters" in res.stderr, res.stderr
    assert [m[0] for m in msgs] == [proto.HELLO, proto.ERROR]
    assert "expected 5 parameters (T0, T_left, T_right, T_bottom, T_top), got 2" in str(msgs[1][2])

    rx = Receiver()
    params = ",".join(map(repr, THETA.tolist()))
    cmd = [built["heat2d_f"], *ARGS, "--fail-at", "2"]
    res = run(cmd, environment(f"127.0.0.1:{rx.port}", params=params))
    (msgs,) = rx.finish()
    assert res.returncode == 1, res.stdout + res.stderr
    assert [m[0] for m in msgs] == [proto.HELLO, proto.STEP, proto.STEP, proto.ERROR]
    assert msgs[-1][2] == "failing on purpose at step 2"

    res = run([built["heat2d_f"]], environment(f"127.0.0.1:{free_port()}", params=params))
    assert res.returncode == 2 and "cannot connect" in res.stderr, res.stderr


def test_sources_ship_as_package_data():
    """Every file of csrc/ (the C and Fortran clients, Melissa's API, the examples) matches a
    pattern of pyproject's package-data, so that it is in the wheel."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["lightning_online"]
    pkg = CSRC.parent
    files = [p.relative_to(pkg).as_posix() for p in CSRC.rglob("*") if p.is_file()]
    assert any(f.endswith(".f90") for f in files) and any("melissa" in f for f in files)
    missing = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missing, missing
