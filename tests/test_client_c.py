"""The C client (``csrc/lightning_online.c``) and the MPI example ``csrc/examples/heat2d.c``.

Both are compiled with the mpich wheel's ``mpicc`` and run against a small TCP server in this
process that decodes what arrives with ``lightning_online._wire.tcp``: one connection, or one
per part when the run has several senders.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lightning_online
from lightning_online._wire import tcp as proto
from lightning_online.solvers.heat2d import Heat2D

CSRC = Path(lightning_online.__file__).parent / "csrc"
BIN = Path(sys.executable).parent
MPICC = BIN / "mpicc"
MPIEXEC = BIN / "mpiexec"
WARNINGS = ["-Wall", "-Wextra", "-std=c99", "-D_POSIX_C_SOURCE=200809L"]
MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDI_", "HYDRA_", "MPIR_", "MPICH_", "OMPI_")
TOKEN = "0123456789abcdef0123456789abcdef"

# A test program: mode in argv[1]; prints one line per check, exits 0 unless it crashes.
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "lightning_online.h"

static lo_client *connect_or_die(void)
{
    lo_client *c = lo_connect();
    if (!c) {
        printf("NULL|%s\n", lo_last_error());
        exit(3);
    }
    return c;
}

static int send_step(lo_client *c, int s)
{
    float f32[6], c64[4];
    double f64 = 3.25 + s, c128[2];
    unsigned short f16[3] = {0x3C00, 0xC000, 0x3800}; /* 1, -2, 0.5 */
    signed char i8[5];
    short i16[3], d8[8];
    int i32[4];
    long long i64[3];
    unsigned char u8[7], b[4], lname = 7, uname = 8, z = (unsigned char)(42 + s);
    int64_t sh23[2] = {2, 3}, sh3[1] = {3}, sh5[1] = {5}, sh22[2] = {2, 2}, sh113[3] = {1, 1, 3};
    int64_t sh7[1] = {7}, sh4[1] = {4}, sh2[1] = {2}, sh1[1] = {1}, sh04[2] = {0, 4};
    int64_t sh8d[8] = {1, 2, 1, 2, 1, 1, 1, 2};
    int i;
    for (i = 0; i < 6; i++) f32[i] = (float)i + 0.5f * (float)s;
    for (i = 0; i < 5; i++) i8[i] = (signed char)((i - 2) * (s + 1));
    for (i = 0; i < 3; i++) i16[i] = (short)(1000 * s - i);
    for (i = 0; i < 4; i++) i32[i] = -100000 * s + i;
    for (i = 0; i < 3; i++) i64[i] = (1LL << 40) + i + s;
    for (i = 0; i < 7; i++) u8[i] = (unsigned char)(250 + i + s);
    for (i = 0; i < 4; i++) b[i] = (unsigned char)((i + s) % 2);
    for (i = 0; i < 8; i++) d8[i] = (short)(i * (s + 1));
    c64[0] = 1.5f; c64[1] = (float)-s; c64[2] = 0.0f; c64[3] = 2.0f;
    c128[0] = s; c128[1] = -0.25;
    {
        lo_field f[16] = {
            {"f32", LO_FLOAT32, 2, sh23, f32},
            {"f64", LO_FLOAT64, 0, NULL, &f64},
            {"f16", LO_FLOAT16, 1, sh3, f16},
            {"i8", LO_INT8, 1, sh5, i8},
            {"i16", LO_INT16, 1, sh3, i16},
            {"i32", LO_INT32, 2, sh22, i32},
            {"i64", LO_INT64, 3, sh113, i64},
            {"u8", LO_UINT8, 1, sh7, u8},
            {"b", LO_BOOL, 1, sh4, b},
            {"c64", LO_COMPLEX64, 1, sh2, c64},
            {"c128", LO_COMPLEX128, 1, sh1, c128},
            {"empty", LO_FLOAT32, 2, sh04, NULL},
            {"a_name_of_forty_seven_bytes_xxxxxxxxxxxxxxxxxxx", LO_UINT8, 0, NULL, &lname},
            {"temp\xc3\xa9rature", LO_UINT8, 0, NULL, &uname},
            {"d8", LO_INT16, 8, sh8d, d8},
            {"z", LO_UINT8, 0, NULL, &z},
        };
        return lo_send_step(c, 16, f);
    }
}

static void bad(lo_client *c, const char *what, int n, const lo_field *f)
{
    int rc = lo_send_step(c, n, f);
    printf("%s|%d|%s\n", what, rc, lo_last_error());
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "send")) {
        lo_client *c = connect_or_die();
        int s, n = atoi(argv[2]);
        for (s = 0; s < n; s++)
            if (send_step(c, s) != 0) printf("send failed: %s\n", lo_last_error());
        printf("close|%d\n", lo_close(c));
    } else if (!strcmp(mode, "badargs")) {
        lo_client *c = connect_or_die();
        float v[2] = {1, 2};
        int64_t sh[1] = {2}, neg[1] = {-3};
        lo_field ok = {"a", LO_FLOAT32, 1, sh, v};
        lo_field f[17];
        int i;
        for (i = 0; i < 17; i++) f[i] = ok;
        f[0].ndim = 9; bad(c, "ndim9", 1, f);
        f[0].ndim = -1; bad(c, "ndim-1", 1, f);
        f[0] = ok; f[0].dtype = 11; bad(c, "dtype11", 1, f);
        f[0].dtype = -1; bad(c, "dtype-1", 1, f);
        f[0] = ok; bad(c, "duplicate", 2, f);
        f[1].name = "b";
        f[0].name = ""; bad(c, "empty_name", 2, f);
        f[0].name = "a_name_of_forty_eight_bytes_xxxxxxxxxxxxxxxxxxxx"; bad(c, "long_name", 2, f);
        f[0].name = "\xff"; bad(c, "bad_utf8", 2, f);
        f[0].name = NULL; bad(c, "null_name", 2, f);
        f[0] = ok; bad(c, "zero_fields", 0, f);
        bad(c, "many_fields", 17, f);
        bad(c, "null_fields", 1, NULL);
        f[0].shape = neg; bad(c, "negative_shape", 1, f);
        f[0].shape = NULL; bad(c, "null_shape", 1, f);
        f[0] = ok; f[0].data = NULL; bad(c, "null_data", 1, f);
        bad(NULL, "null_client", 1, &ok);
        printf("good|%d|\n", lo_send_step(c, 1, &ok));
        printf("close|%d\n", lo_close(c));
    } else if (!strcmp(mode, "connect")) {
        lo_client *c = connect_or_die();
        printf("connected|%d\n", lo_close(c));
    } else if (!strcmp(mode, "params")) {
        double theta[8];
        int i, n = lo_parameters(theta, atoi(argv[2]));
        printf("%d", n);
        for (i = 0; i < n; i++) printf("|%.17g", theta[i]);
        printf("|%s\n", n < 0 ? lo_last_error() : "");
    } else if (!strcmp(mode, "hangup")) {
        /* The server hangs up: once its reset has arrived a send hits EPIPE, which must give
         * -1, not kill us with SIGPIPE. Small steps, so the error comes from a fresh send. */
        lo_client *c = connect_or_die();
        double v = 1.0;
        lo_field f = {"v", LO_FLOAT64, 0, NULL, &v};
        struct timespec pause = {0, 10000000};
        int i;
        for (i = 0; i < 1000 && lo_send_step(c, 1, &f) == 0; i++) nanosleep(&pause, NULL);
        printf("failed|%d|%s\n", i, lo_last_error());
        printf("again|%d|%s\n", lo_send_step(c, 1, &f), lo_last_error());
        printf("close|%d|%s\n", lo_close(c), lo_last_error());
    } else if (!strcmp(mode, "part")) {
        /* part n_parts n_steps [to]: one sender of several; part p sends "rows" float64 of
         * shape (p % 8 + 1, 2) and "x" int32 of shape (3,) on part 0, (0,) on the others. */
        int part = atoi(argv[2]), n_parts = atoi(argv[3]), n = atoi(argv[4]), s, i;
        lo_client *c = argc > 5 && !strcmp(argv[5], "to")
            ? lo_connect_to_part(getenv("LIGHTNING_ONLINE_ADDRESS"),
                                 getenv("LIGHTNING_ONLINE_TOKEN"), part, n_parts)
            : lo_connect_part(part, n_parts);
        if (!c) {
            printf("NULL|%s\n", lo_last_error());
            return 3;
        }
        for (s = 0; s < n; s++) {
            double rows[16];
            int x[3] = {s, s + 1, s + 2};
            int64_t shr[2] = {part % 8 + 1, 2}, shx[1] = {part == 0 ? 3 : 0};
            lo_field f[2] = {{"rows", LO_FLOAT64, 2, shr, rows}, {"x", LO_INT32, 1, shx, x}};
            for (i = 0; i < 2 * (part % 8 + 1); i++) rows[i] = 100.0 * part + 10.0 * s + i;
            if (lo_send_step(c, 2, f) != 0) printf("send failed: %s\n", lo_last_error());
        }
        printf("close|%d\n", lo_close(c));
    } else if (!strcmp(mode, "abort")) {
        lo_client *c = connect_or_die();
        send_step(c, 0);
        printf("abort|%d\n", lo_abort(c, "solver diverged: temp\xc3\xa9rature = nan"));
    }
    return 0;
}
"""


def expected_step(s: int) -> dict[str, np.ndarray]:
    """What ``send_step(c, s)`` of PROGRAM sends."""
    i = np.arange
    return {
        "f32": (i(6) + 0.5 * s).astype(np.float32).reshape(2, 3),
        "f64": np.array(3.25 + s),
        "f16": np.array([1, -2, 0.5], dtype=np.float16),
        "i8": ((i(5) - 2) * (s + 1)).astype(np.int8),
        "i16": (1000 * s - i(3)).astype(np.int16),
        "i32": (-100000 * s + i(4)).astype(np.int32).reshape(2, 2),
        "i64": ((1 << 40) + i(3) + s).astype(np.int64).reshape(1, 1, 3),
        "u8": ((250 + i(7) + s) % 256).astype(np.uint8),
        "b": ((i(4) + s) % 2).astype(bool),
        "c64": np.array([1.5 - s * 1j, 2j], dtype=np.complex64),
        "c128": np.array([s - 0.25j]),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "a_name_of_forty_seven_bytes_xxxxxxxxxxxxxxxxxxx": np.array(7, dtype=np.uint8),
        "température": np.array(8, dtype=np.uint8),
        "d8": (i(8) * (s + 1)).astype(np.int16).reshape(1, 2, 1, 2, 1, 1, 1, 2),
        "z": np.array(42 + s, dtype=np.uint8),
    }


def compile_c(out: Path, *sources: Path) -> str:
    """Compile like the documented command (plus warnings); return the compiler's messages."""
    cmd = [str(MPICC), "-O2", *WARNINGS, f"-I{CSRC}", *map(str, sources)]
    cmd += [str(CSRC / "lightning_online.c"), "-o", str(out), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not MPICC.exists():
        pytest.skip(f"no mpicc next to {sys.executable} (install the mpich extra)")
    d = tmp_path_factory.mktemp("csrc")
    (d / "prog.c").write_text(PROGRAM)
    return {
        "prog": d / "prog",
        "heat2d": d / "heat2d",
        "messages": compile_c(d / "prog", d / "prog.c")
        + compile_c(d / "heat2d", CSRC / "examples" / "heat2d.c"),
    }


def recv_exact(conn: socket.socket, n: int, eof_ok: bool = False) -> bytearray | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            if eof_ok and not buf:
                return None
            raise proto.ProtocolError(f"connection ended inside a message ({len(buf)}/{n})")
        buf += chunk
    return buf


Message = tuple[int, int, object]


def read_message(conn: socket.socket, eof_ok: bool = False) -> Message | None:
    """One message, decoded: ``(kind, step, value)`` with ``(part, n_parts, token)`` for a
    HELLO, the fields dict of a STEP, the text of an ERROR, ``b""`` for a CLOSE; None at EOF."""
    head = recv_exact(conn, proto.HEADER.size, eof_ok=eof_ok)
    if head is None:
        return None
    kind, n_fields, step, size = proto.decode_header(head)
    payload = recv_exact(conn, size) if size else bytearray()
    assert payload is not None
    value: object
    if kind == proto.STEP:
        fields = proto.decode_step(n_fields, payload)
        value = {k: np.array(v) for k, v in fields.items()}
    elif kind == proto.HELLO:
        value = proto.decode_hello(payload)
    elif kind == proto.ERROR:
        value = payload.decode("utf-8")
    else:
        value = bytes(payload)
    return kind, step, value


class Receiver:
    """A TCP server on the loopback for one run of ``n_parts`` connections, in a thread.

    It accepts the connections in any order and files each under the part its HELLO names,
    then, once all are there, reads one message from every part in part order until each has
    ended (as the receiving side reads step k of every part). ``parts[p]``: the messages of
    part p (see ``read_message``); ``messages``: those of part 0; ``order``: the parts in the
    order they connected. ``hangup``: close the connections right after the HELLOs.
    """

    def __init__(
        self, family: int = socket.AF_INET, hangup: bool = False, n_parts: int = 1
    ) -> None:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.sock = socket.create_server((host, 0), family=family, backlog=max(8, n_parts))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hangup = hangup
        self.n_parts = n_parts
        self.parts: list[list[Message]] = [[] for _ in range(n_parts)]
        self.order: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def messages(self) -> list[Message]:
        return self.parts[0]

    def _serve(self) -> None:
        conns: dict[int, socket.socket] = {}
        try:
            deadline = time.monotonic() + 60
            while len(conns) < self.n_parts:
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    if self._stop.is_set() or time.monotonic() > deadline:
                        return
                    continue
                conn.settimeout(60)
                hello = read_message(conn, eof_ok=True)
                if hello is None or hello[0] != proto.HELLO:
                    conn.close()
                    raise proto.ProtocolError(f"the first message is not a HELLO: {hello}")
                part, n_parts, _ = hello[2]  # type: ignore[misc]
                if n_parts != self.n_parts or part in conns:
                    conn.close()
                    raise proto.ProtocolError(
                        f"HELLO of part {part} of {n_parts}; expected {self.n_parts} parts, "
                        f"got parts {sorted(conns)} already"
                    )
                conns[part] = conn
                self.order.append(part)
                self.parts[part].append(hello)
            if self.hangup:
                return
            alive = list(range(self.n_parts))
            while alive:
                for part in list(alive):
                    msg = read_message(conns[part], eof_ok=True)
                    if msg is None:
                        alive.remove(part)
                    else:
                        self.parts[part].append(msg)
        except BaseException as exc:
            self.error = exc
        finally:
            for conn in conns.values():
                conn.close()
            self.sock.close()

    def finish(self) -> list[list[Message]]:
        """After the program has ended: wait for the server and return what arrived, by part."""
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the receiving thread did not finish"
        if self.error is not None:
            raise self.error
        return self.parts


def assemble(parts: list[list[Message]], n_steps: int) -> list[dict[str, np.ndarray]]:
    """Check that every part sent HELLO, n_steps STEPs and CLOSE; return each step's fields
    concatenated along the first axis in part order, as the receiving side does."""
    for p, msgs in enumerate(parts):
        kinds = [m[0] for m in msgs]
        assert kinds == [proto.HELLO] + [proto.STEP] * n_steps + [proto.CLOSE], (p, kinds)
        assert msgs[0][2] == (p, len(parts), TOKEN.encode())
        assert [m[1] for m in msgs[1:]] == [*range(n_steps), n_steps], p  # own step counter
    steps = []
    for k in range(1, n_steps + 1):
        shares = [msgs[k][2] for msgs in parts]
        assert all(isinstance(f, dict) and list(f) == list(shares[0]) for f in shares), shares
        steps.append(
            {name: np.concatenate([f[name] for f in shares], axis=0) for name in shares[0]}  # type: ignore[index]
        )
    return steps


def environment(address: str | None = None, token: str | None = TOKEN, params: str | None = None):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith((*MPI_ENV_PREFIXES, "LIGHTNING_ONLINE_"))
    }
    for key, value in (("ADDRESS", address), ("TOKEN", token), ("PARAMETERS", params)):
        if value is not None:
            env[f"LIGHTNING_ONLINE_{key}"] = value
    return env


def run_many(
    cmds: list[list[object]], env: dict[str, str], timeout: float = 60, between=None
) -> list[subprocess.CompletedProcess]:
    """Run several commands at once (each in a new session, all killed on a timeout);
    ``between(i)`` is called after starting command i."""
    procs: list[subprocess.Popen] = []
    deadline = time.monotonic() + timeout
    try:
        for i, cmd in enumerate(cmds):
            procs.append(
                subprocess.Popen(
                    [str(c) for c in cmd],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
            if between is not None:
                between(i)
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


def run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """One command in a new session, its whole group killed on a timeout (mpiexec and ranks)."""
    return run_many([cmd], env, timeout)[0]


def lines(out: str) -> dict[str, list[str]]:
    return {ln.split("|")[0]: ln.split("|")[1:] for ln in out.splitlines()}


def test_compiles_without_warnings(built):
    assert "warning" not in built["messages"], built["messages"]


def test_steps_arrive_intact(built):
    rx = Receiver()
    res = run([built["prog"], "send", "3"], environment(f"127.0.0.1:{rx.port}"))
    (msgs,) = rx.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "close|0"
    assert [m[0] for m in msgs] == [proto.HELLO, proto.STEP, proto.STEP, proto.STEP, proto.CLOSE]
    assert msgs[0][2] == (0, 1, TOKEN.encode())  # part 0 of 1
    assert [m[1] for m in msgs[1:]] == [0, 1, 2, 3]  # step indices, then CLOSE's count
    for s, (_, _, fields) in enumerate(msgs[1:4]):
        expected = expected_step(s)
        assert isinstance(fields, dict)
        assert list(fields) == list(expected)
        for name, want in expected.items():
            got = fields[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_abort_sends_the_message(built):
    rx = Receiver()
    res = run([built["prog"], "abort"], environment(f"127.0.0.1:{rx.port}"))
    (msgs,) = rx.finish()
    assert res.stdout.strip() == "abort|0", res.stdout + res.stderr
    assert [m[0] for m in msgs] == [proto.HELLO, proto.STEP, proto.ERROR]
    assert msgs[2][2] == "solver diverged: température = nan"


def test_bad_arguments_are_refused_before_sending(built):
    rx = Receiver()
    res = run([built["prog"], "badargs"], environment(f"127.0.0.1:{rx.port}"))
    (msgs,) = rx.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    out = lines(res.stdout)
    expected = {
        "ndim9": "ndim 9",
        "ndim-1": "ndim -1",
        "dtype11": "unknown dtype code 11",
        "dtype-1": "unknown dtype code -1",
        "duplicate": 'field name "a" appears twice',
        "empty_name": "1 to 47 bytes",
        "long_name": "1 to 47 bytes",
        "bad_utf8": "UTF-8",
        "null_name": "no name",
        "zero_fields": "1 to 16 fields, got 0",
        "many_fields": "1 to 16 fields, got 17",
        "null_fields": "fields is NULL",
        "negative_shape": "negative",
        "null_shape": "shape is NULL",
        "null_data": "data is NULL",
        "null_client": "client is NULL",
    }
    for case, words in expected.items():
        rc, err = out[case]
        assert rc == "-1" and words in err, (case, rc, err)
    assert out["good"][0] == "0" and out["close"] == ["0"]
    # Refused steps sent nothing and took no index: the stream stays in step.
    assert [(m[0], m[1]) for m in msgs] == [(proto.HELLO, 0), (proto.STEP, 0), (proto.CLOSE, 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("address", "token", "words"),
    [
        (None, TOKEN, "LIGHTNING_ONLINE_ADDRESS is not set"),
        ("127.0.0.1:1", None, "LIGHTNING_ONLINE_TOKEN is not set"),
        ("127.0.0.1", TOKEN, "is not host:port"),
        ("127.0.0.1:12x", TOKEN, "bad port"),
        ("127.0.0.1:{free}", TOKEN, "cannot connect to 127.0.0.1:"),
    ],
)
def test_connect_fails_cleanly(built, address, token, words):
    if address is not None:
        address = address.format(free=free_port())
    res = run([built["prog"], "connect"], environment(address, token))
    assert res.returncode == 3, res.stdout + res.stderr  # lo_connect gave NULL, no crash
    status, message = res.stdout.strip().split("|", 1)
    assert status == "NULL" and words in message, message


@pytest.mark.parametrize("form", ["localhost:{port}", "::1:{port}", "[::1]:{port}"])
def test_connect_by_name_and_ipv6(built, form):
    if form == "localhost:{port}":
        rx = Receiver()
    else:
        try:
            rx = Receiver(family=socket.AF_INET6)
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback: {exc}")
    res = run([built["prog"], "connect"], environment(form.format(port=rx.port)))
    (msgs,) = rx.finish()
    assert res.stdout.strip() == "connected|0", res.stdout + res.stderr
    assert [(m[0], m[1]) for m in msgs] == [(proto.HELLO, 0), (proto.CLOSE, 0)]


@pytest.mark.parametrize("how", ["env", "to"])
@pytest.mark.parametrize(
    ("part", "n_parts", "words"),
    [
        (3, 3, "part = 3 is out of range 0..2"),
        (-1, 2, "part = -1 is out of range 0..1"),
        (0, 0, "n_parts = 0 is out of range 1..65536"),
        (0, -2, "n_parts = -2 is out of range"),
        (0, 65537, "n_parts = 65537 is out of range 1..65536"),
    ],
)
def test_connect_part_checks_its_arguments(built, how, part, n_parts, words):
    # A free port: had the arguments been let through, the error would be "cannot connect".
    env = environment(f"127.0.0.1:{free_port()}")
    res = run([built["prog"], "part", part, n_parts, 1, how], env)
    assert res.returncode == 3, res.stdout + res.stderr
    status, message = res.stdout.strip().split("|", 1)
    assert status == "NULL" and words in message, message


def test_connect_part_limits(built):
    """Part 65535 of 65536 is accepted and announced as such (read by hand: one connection)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(60)
        env = environment(f"127.0.0.1:{srv.getsockname()[1]}")
        with subprocess.Popen(
            [str(built["prog"]), "part", "65535", "65536", "1"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as proc:
            try:
                conn, _ = srv.accept()
                with conn:
                    conn.settimeout(60)
                    msgs = []
                    while (msg := read_message(conn, eof_ok=True)) is not None:
                        msgs.append(msg)
                out, _ = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
    assert out.strip() == "close|0", out
    assert [(m[0], m[1]) for m in msgs] == [(proto.HELLO, 0), (proto.STEP, 0), (proto.CLOSE, 1)]
    assert msgs[0][2] == (65535, 65536, TOKEN.encode())
    assert isinstance(msgs[1][2], dict) and msgs[1][2]["x"].shape == (0,)


@pytest.mark.parametrize("how", ["env", "to"])
def test_three_parts_in_any_connection_order(built, how):
    rx = Receiver(n_parts=3)
    env = environment(f"127.0.0.1:{rx.port}")
    order = [2, 0, 1]  # not the part order; each starts once the one before has connected

    def wait_connected(i: int) -> None:
        deadline = time.monotonic() + 30
        while len(rx.order) <= i and rx.error is None and time.monotonic() < deadline:
            time.sleep(0.01)

    cmds = [[built["prog"], "part", p, 3, 4, how] for p in order]
    results = run_many(cmds, env, between=wait_connected)
    parts = rx.finish()
    for res in results:
        assert res.returncode == 0 and res.stdout.strip() == "close|0", res.stdout + res.stderr
    assert rx.order == order
    steps = assemble(parts, 4)
    for s, fields in enumerate(steps):
        rows = np.concatenate(
            [100.0 * p + 10.0 * s + np.arange(2 * (p + 1)).reshape(p + 1, 2) for p in range(3)]
        )
        np.testing.assert_array_equal(fields["rows"], rows)
        assert fields["x"].dtype == np.int32
        np.testing.assert_array_equal(fields["x"], [s, s + 1, s + 2])  # part 0's, then (0,)s


def test_parameters(built):
    values = [123.5, 400.25, 0.1, -1e-300, 1 / 3, 2.5e17]
    res = run([built["prog"], "params", "8"], environment(params=",".join(map(repr, values))))
    n, *parsed, err = res.stdout.strip().split("|")
    assert int(n) == len(values) and err == ""
    assert [float(v) for v in parsed] == values  # exact round trip of Python's repr

    def one(params: str | None, max_: int) -> tuple[int, str]:
        out = run([built["prog"], "params", str(max_)], environment(params=params)).stdout
        fields = out.strip().split("|")
        return int(fields[0]), fields[-1]

    assert one("", 5) == (0, "")
    assert one("1", 5) == (1, "")
    for params, max_, words in [
        (None, 5, "LIGHTNING_ONLINE_PARAMETERS is not set"),
        ("1,2,x", 5, 'value 3 ("x") is not a number'),
        ("1,,2", 5, "value 2 is empty"),
        ("1,2,", 5, "value 3 is empty"),
        ("1,2,3", 2, "more than 2 values"),
    ]:
        n, err = one(params, max_)
        assert n == -1 and words in err, (params, err)


def test_hangup_gives_errors_not_sigpipe(built):
    rx = Receiver(hangup=True)
    res = run([built["prog"], "hangup"], environment(f"127.0.0.1:{rx.port}"))
    rx.finish()
    assert res.returncode == 0, f"killed? {res.returncode} {res.stdout}{res.stderr}"
    out = lines(res.stdout)
    n_sent, message = out["failed"]
    assert 0 < int(n_sent) < 1000 and "sending to the training process failed" in message
    assert out["again"][0] == "-1" and "broke" in out["again"][1]
    assert out["close"][0] == "-1"


# ---- the MPI example ----

THETA = np.array([300.0, 123.5, 480.25, 200.0, 410.0])


def run_heat2d(
    built, n_procs: int, args: list[str], params: str | None = None, n_parts: int = 1
) -> tuple[subprocess.CompletedProcess, list[list[Message]]]:
    """Run heat2d under mpiexec; return (completed process, messages received by part)."""
    rx = Receiver(n_parts=n_parts)
    params = ",".join(repr(float(v)) for v in THETA) if params is None else params
    cmd = [MPIEXEC, "-n", str(n_procs), built["heat2d"], *args]
    res = run(cmd, environment(f"127.0.0.1:{rx.port}", params=params), timeout=120)
    return res, rx.finish()


@pytest.mark.parametrize(
    ("n_procs", "nx", "ny"),
    [(1, 12, 10), (2, 12, 10), (3, 5, 2)],
    ids=["1rank", "2ranks", "3ranks_2rows"],
)
def test_heat2d_matches_python(built, n_procs, nx, ny):
    res, (msgs,) = run_heat2d(built, n_procs, ["--nx", str(nx), "--ny", str(ny), "--n-steps", "7"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert [m[0] for m in msgs] == [proto.HELLO] + [proto.STEP] * 7 + [proto.CLOSE]
    assert msgs[0][2] == (0, 1, TOKEN.encode()) and msgs[-1][1] == 7
    expected = list(Heat2D(nx=nx, ny=ny, n_steps=7)(THETA))
    for k, ((_, step, fields), (x, y)) in enumerate(zip(msgs[1:-1], expected, strict=True)):
        assert step == k and isinstance(fields, dict) and list(fields) == ["x", "y"]
        assert fields["x"].dtype == np.float32 and fields["x"].shape == (6,)
        assert fields["y"].dtype == np.float32 and fields["y"].shape == (ny * nx,)
        np.testing.assert_allclose(fields["x"], x, rtol=1e-6)
        np.testing.assert_allclose(fields["y"], y, rtol=1e-6)


@pytest.mark.parametrize("n_procs", [2, 3, 12], ids=["2ranks", "3ranks", "12ranks_10rows"])
def test_heat2d_parts_match_python(built, n_procs):
    """--parts: every rank sends its own rows; concatenated in part order they are Heat2D's."""
    nx, ny = 12, 10
    res, parts = run_heat2d(
        built,
        n_procs,
        ["--nx", str(nx), "--ny", str(ny), "--n-steps", "7", "--parts"],
        n_parts=n_procs,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    steps = assemble(parts, 7)
    rows = [ny // n_procs + (r < ny % n_procs) for r in range(n_procs)]  # heat2d's split
    for p, msgs in enumerate(parts):
        for _, _, fields in msgs[1:-1]:
            assert isinstance(fields, dict)
            assert fields["x"].shape == ((6,) if p == 0 else (0,))
            assert fields["y"].shape == (rows[p] * nx,)
    expected = list(Heat2D(nx=nx, ny=ny, n_steps=7)(THETA))
    for fields, (x, y) in zip(steps, expected, strict=True):
        assert fields["x"].dtype == np.float32 and fields["x"].shape == (6,)
        assert fields["y"].dtype == np.float32 and fields["y"].shape == (ny * nx,)
        np.testing.assert_allclose(fields["x"], x, rtol=1e-6)
        np.testing.assert_allclose(fields["y"], y, rtol=1e-6)


def test_heat2d_fail_at_sends_error(built):
    res, (msgs,) = run_heat2d(
        built, 2, ["--nx", "12", "--ny", "10", "--n-steps", "5", "--fail-at", "2"]
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert [m[0] for m in msgs] == [proto.HELLO, proto.STEP, proto.STEP, proto.ERROR]
    assert msgs[-1][2] == "failing on purpose at step 2"


def test_heat2d_parts_fail_at_every_part_sends_error(built):
    args = ["--nx", "12", "--ny", "10", "--n-steps", "5", "--fail-at", "2", "--parts"]
    res, parts = run_heat2d(built, 3, args, n_parts=3)
    assert res.returncode == 1, res.stdout + res.stderr
    for p, msgs in enumerate(parts):
        assert [m[0] for m in msgs] == [proto.HELLO, proto.STEP, proto.STEP, proto.ERROR], p
        assert msgs[-1][2] == "failing on purpose at step 2"


def test_heat2d_bad_parameters(built):
    res, (msgs,) = run_heat2d(built, 2, ["--nx", "4", "--ny", "4"], params="1.0,2.0,3.0,4.0")
    assert res.returncode == 1, res.stdout + res.stderr
    assert [m[0] for m in msgs] == [proto.HELLO, proto.ERROR]
    assert "expected 5 parameters" in str(msgs[-1][2])


def test_heat2d_parts_bad_parameters(built):
    args = ["--parts", "--nx", "4", "--ny", "4"]
    res, parts = run_heat2d(built, 2, args, params="1.0,2.0,3.0,4.0", n_parts=2)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "expected 5 parameters" in res.stderr
    for p, msgs in enumerate(parts):
        assert [m[0] for m in msgs] == [proto.HELLO, proto.ERROR], p
        assert "expected 5 parameters" in str(msgs[-1][2])


@pytest.mark.parametrize("extra", [[], ["--parts"]], ids=["gather", "parts"])
def test_heat2d_without_a_listener_aborts(built, extra):
    env = environment(f"127.0.0.1:{free_port()}", params="1,2,3,4,5")
    cmd = [MPIEXEC, "-n", "2", built["heat2d"], "--n-steps", "2", *extra]
    res = run(cmd, env, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr  # no connection: all ranks exit 2
    assert "cannot connect" in res.stderr, res.stderr
