/*
 * heat2d.c - MPI solver of the 2-D heat equation streaming to lightning_online.
 *
 * Computes exactly what the Python solver lightning_online.solvers.heat2d.Heat2D computes (same
 * grid, sub-step count, forward Euler update, float64 arithmetic, samples), with the ny rows of
 * the grid split over the MPI ranks:
 *
 *   u_t = alpha (u_xx + u_yy) on (0, 1)^2, nx * ny interior nodes, Dirichlet walls;
 *   theta = (T0, T_left, T_right, T_bottom, T_top) from LIGHTNING_ONLINE_PARAMETERS;
 *   per output step k = 1..n_steps, fields "x" float32 (6,) = [theta / scale..., k / n_steps]
 *   and "y" float32 (ny * nx,) = interior field / scale, C order (ny, nx).
 *
 * By default rank 0 gathers the field and is the run's only sender. With --parts every rank
 * is a sender instead (lo_connect_part(rank, size), no gather): per output step, rank r sends
 * "x" float32 of shape (6,) on rank 0 and (0,) on the others, and "y" float32 of shape
 * (rows_r * nx,) with its own interior rows (0 rows when there are more ranks than rows); the
 * receiving side concatenates the parts in rank order, which gives the same x and y.
 *
 * Build and run (the client library is compiled in):
 *   mpicc -O2 -I$(python -m lightning_online.client --include) heat2d.c \
 *       $(python -m lightning_online.client --source) -o heat2d -lm
 *   ExternalSolver(["heat2d", "--nx", "32"], n_procs=4, ...)  (or mpiexec -n 4 heat2d)
 *   ExternalSolver(["heat2d", "--nx", "32", "--parts"], n_procs=4, ...)  (4 senders)
 *
 * Options: --nx N --ny N --n-steps N --alpha A --t-end T --normalize S|none --safety F
 * (defaults as Heat2D: 32, 32, 100, 1, 0.2 / alpha, 500, 0.9); --parts (no value): every rank
 * sends its share, as above; --fail-at K makes the run abort with an ERROR message instead of
 * sending step index K (for fault tests; sent by rank 0, or by every rank with --parts).
 *
 * Exit codes: 0 done; 1 bad options or parameters (an ERROR message was sent, by every
 * connected rank with --parts); 2 no connection to the training process (with --parts: when
 * any rank cannot connect, every rank exits 2; the others send ERROR first), or
 * MPI_Abort(MPI_COMM_WORLD, 2) when the connection breaks mid-run.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lightning_online.h"

/* Match numpy operation by operation: no fused multiply-add (GCC ignores the STDC pragma). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#else
#pragma STDC FP_CONTRACT OFF
#endif

typedef struct {
    int nx, ny, n_steps, fail_at, ok, no_connection;
    double alpha, t_final, scale, safety;
    double theta[5];
    char error[256];
} config;

static int parse_int(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < -1000000000L || v > 1000000000L) return -1;
    *out = (int)v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end) return -1;
    *out = v;
    return 0;
}

/* Fill cfg from the command line and the environment; on error, cfg->ok = 0 and cfg->error. */
static void configure(int argc, char **argv, config *cfg)
{
    double t_end = 0.0;
    int i, n, have_t_end = 0;

    cfg->nx = 32;
    cfg->ny = 32;
    cfg->n_steps = 100;
    cfg->fail_at = -1;
    cfg->alpha = 1.0;
    cfg->scale = 500.0;
    cfg->safety = 0.9;
    cfg->ok = 0;
    for (i = 1; i < argc; i++) {
        const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int bad;
        if (!strcmp(opt, "--parts")) continue; /* no value; read by wants_parts() */
        if (!val) {
            snprintf(cfg->error, sizeof cfg->error, "heat2d: option %s needs a value", opt);
            return;
        }
        if (!strcmp(opt, "--nx")) bad = parse_int(val, &cfg->nx);
        else if (!strcmp(opt, "--ny")) bad = parse_int(val, &cfg->ny);
        else if (!strcmp(opt, "--n-steps")) bad = parse_int(val, &cfg->n_steps);
        else if (!strcmp(opt, "--fail-at")) bad = parse_int(val, &cfg->fail_at);
        else if (!strcmp(opt, "--alpha")) bad = parse_double(val, &cfg->alpha);
        else if (!strcmp(opt, "--t-end")) {
            bad = parse_double(val, &t_end);
            have_t_end = 1;
        } else if (!strcmp(opt, "--safety")) bad = parse_double(val, &cfg->safety);
        else if (!strcmp(opt, "--normalize")) {
            bad = 0;
            if (!strcmp(val, "none")) cfg->scale = 1.0;
            else bad = parse_double(val, &cfg->scale) || !(cfg->scale > 0);
        } else {
            snprintf(cfg->error, sizeof cfg->error,
                     "heat2d: unknown option %s (expected --nx, --ny, --n-steps, --alpha, "
                     "--t-end, --normalize, --safety, --parts, --fail-at)",
                     opt);
            return;
        }
        if (bad) {
            snprintf(cfg->error, sizeof cfg->error, "heat2d: bad value %s for %s", val, opt);
            return;
        }
        i++;
    }
    if (cfg->nx < 1 || cfg->ny < 1 || cfg->n_steps < 1 ||
        (long long)cfg->nx * cfg->ny > 1000000000LL) {
        snprintf(cfg->error, sizeof cfg->error,
                 "heat2d: nx, ny and n_steps must be positive (and nx * ny <= 1e9)");
        return;
    }
    if (!(cfg->alpha > 0) || !isfinite(cfg->alpha)) {
        snprintf(cfg->error, sizeof cfg->error, "heat2d: alpha must be > 0");
        return;
    }
    if (!(cfg->safety > 0 && cfg->safety <= 1)) {
        snprintf(cfg->error, sizeof cfg->error, "heat2d: safety must be in (0, 1]");
        return;
    }
    if (have_t_end && !(t_end > 0 && isfinite(t_end))) {
        snprintf(cfg->error, sizeof cfg->error, "heat2d: t_end must be > 0");
        return;
    }
    cfg->t_final = have_t_end ? t_end : 0.2 / cfg->alpha;

    n = lo_parameters(cfg->theta, 5);
    if (n != 5) {
        if (n < 0)
            snprintf(cfg->error, sizeof cfg->error, "heat2d: %s", lo_last_error());
        else
            snprintf(cfg->error, sizeof cfg->error,
                     "heat2d: expected 5 parameters (T0, T_left, T_right, T_bottom, T_top), "
                     "got %d",
                     n);
        return;
    }
    for (i = 0; i < 5; i++) {
        if (!isfinite(cfg->theta[i])) {
            snprintf(cfg->error, sizeof cfg->error, "heat2d: parameter %d is not finite", i);
            return;
        }
    }
    cfg->ok = 1;
}

/* Whether --parts is among the options (as configure() reads them: options with a value skip
 * it), known to every rank before anything connects. */
static int wants_parts(int argc, char **argv)
{
    int i;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--parts")) return 1;
        i++; /* the value */
    }
    return 0;
}

/* Forward-Euler sub-steps per output step, as Heat2D.substeps. */
static int substeps(const config *cfg)
{
    double hx = 1.0 / (cfg->nx + 1), hy = 1.0 / (cfg->ny + 1);
    double dt_max = 1.0 / (2.0 * cfg->alpha * (1.0 / (hx * hx) + 1.0 / (hy * hy)));
    double dt_out = cfg->t_final / cfg->n_steps;
    double m = ceil(dt_out / (cfg->safety * dt_max));
    return m < 1 ? 1 : (int)m;
}

int main(int argc, char **argv)
{
    int rank, size, r, k, s, i, j;
    int rows, j0, n_active, up, down, m, nx, parts, failed, status = 0;
    int *counts = NULL, *displs = NULL;
    double dt, rx, ry, rc, t0, left, right, bottom, top;
    double *u, *tmp;
    float *ylocal, *y = NULL, x[6];
    lo_client *client = NULL;
    config cfg;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    /* The senders connect first, so that a bad configuration reaches the training side: rank 0
     * alone, or with --parts every rank (and all of them learn whether one could not). */
    memset(&cfg, 0, sizeof cfg);
    parts = wants_parts(argc, argv);
    if (parts) {
        client = lo_connect_part(rank, size);
        if (!client) fprintf(stderr, "heat2d: rank %d: %s\n", rank, lo_last_error());
        failed = client == NULL;
        MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (failed) {
            if (client) lo_abort(client, "heat2d: another rank could not connect");
            MPI_Finalize();
            return 2;
        }
    }
    if (rank == 0) {
        if (!parts) client = lo_connect();
        if (client) {
            configure(argc, argv, &cfg);
        } else {
            cfg.no_connection = 1;
            snprintf(cfg.error, sizeof cfg.error, "heat2d: %s", lo_last_error());
        }
    }
    /* Rank 0 alone reads the configuration: every rank then agrees on it. Failures here end
     * all ranks normally rather than with MPI_Abort, which can lose rank 0's stderr. */
    MPI_Bcast(&cfg, (int)sizeof cfg, MPI_BYTE, 0, MPI_COMM_WORLD);
    if (!cfg.ok) {
        if (rank == 0) fprintf(stderr, "%s\n", cfg.error);
        if (client) lo_abort(client, cfg.error);
        MPI_Finalize();
        return cfg.no_connection ? 2 : 1;
    }

    /* Block distribution of the ny rows; with more ranks than rows the last ones have none
     * and only take part in the gathers. */
    nx = cfg.nx;
    n_active = size < cfg.ny ? size : cfg.ny;
    rows = cfg.ny / size + (rank < cfg.ny % size);
    j0 = rank * (cfg.ny / size) + (rank < cfg.ny % size ? rank : cfg.ny % size);
    down = rank > 0 && rank < n_active ? rank - 1 : MPI_PROC_NULL;
    up = rank + 1 < n_active ? rank + 1 : MPI_PROC_NULL;

    /* Same scalars as Heat2D._run. */
    m = substeps(&cfg);
    dt = cfg.t_final / cfg.n_steps / m;
    rx = cfg.alpha * dt * ((double)(nx + 1) * (nx + 1));
    ry = cfg.alpha * dt * ((double)(cfg.ny + 1) * (cfg.ny + 1));
    rc = 1.0 - 2.0 * rx - 2.0 * ry;
    t0 = cfg.theta[0];
    left = cfg.theta[1];
    right = cfg.theta[2];
    bottom = cfg.theta[3];
    top = cfg.theta[4];

    /* Local rows with one halo row each side (a wall row on the first and last rank). */
    u = (double *)malloc(sizeof(double) * (size_t)(rows + 2) * (size_t)(nx + 2));
    tmp = (double *)malloc(sizeof(double) * ((size_t)rows * nx + 1));
    ylocal = (float *)malloc(sizeof(float) * ((size_t)rows * nx + 1));
    if (rank == 0 && !parts) {
        y = (float *)malloc(sizeof(float) * (size_t)cfg.ny * nx);
        counts = (int *)malloc(sizeof(int) * (size_t)size);
        displs = (int *)malloc(sizeof(int) * (size_t)size);
    }
    if (!u || !tmp || !ylocal || (rank == 0 && !parts && (!y || !counts || !displs))) {
        fprintf(stderr, "heat2d: out of memory on rank %d\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    if (rank == 0 && !parts) {
        for (r = 0; r < size; r++) {
            int rr = cfg.ny / size + (r < cfg.ny % size);
            int rj = r * (cfg.ny / size) + (r < cfg.ny % size ? r : cfg.ny % size);
            counts[r] = rr * nx;
            displs[r] = rj * nx;
        }
    }
#define U(a, b) u[(size_t)(a) * (size_t)(nx + 2) + (size_t)(b)]
    for (j = 0; j < rows + 2; j++) {
        for (i = 1; i <= nx; i++) U(j, i) = t0;
        U(j, 0) = left;
        U(j, nx + 1) = right;
    }
    if (rows > 0 && j0 == 0) {
        for (i = 1; i <= nx; i++) U(0, i) = bottom;
        U(0, 0) = 0.5 * (left + bottom); /* corners: unused */
        U(0, nx + 1) = 0.5 * (right + bottom);
    }
    if (rows > 0 && j0 + rows == cfg.ny) {
        for (i = 1; i <= nx; i++) U(rows + 1, i) = top;
        U(rows + 1, 0) = 0.5 * (left + top);
        U(rows + 1, nx + 1) = 0.5 * (right + top);
    }

    for (i = 0; i < 5; i++) x[i] = (float)(cfg.theta[i] / cfg.scale);
    for (k = 1; k <= cfg.n_steps; k++) {
        if (k - 1 == cfg.fail_at) { /* every rank knows fail_at: all stop here */
            if (client) { /* rank 0, or every rank with --parts */
                char msg[64];
                snprintf(msg, sizeof msg, "failing on purpose at step %d", cfg.fail_at);
                lo_abort(client, msg);
                client = NULL;
            }
            status = 1;
            break;
        }
        if (rows > 0) {
            for (s = 0; s < m; s++) {
                /* Halo rows from the neighbours (MPI_PROC_NULL leaves the wall rows). */
                MPI_Sendrecv(&U(rows, 1), nx, MPI_DOUBLE, up, 0, &U(0, 1), nx, MPI_DOUBLE, down,
                             0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Sendrecv(&U(1, 1), nx, MPI_DOUBLE, down, 1, &U(rows + 1, 1), nx, MPI_DOUBLE,
                             up, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                /* tmp = rx (E + W) + ry (N + S) + rc C in numpy's order, from the old field. */
                for (j = 1; j <= rows; j++) {
                    double *t = tmp + (size_t)(j - 1) * nx - 1;
                    for (i = 1; i <= nx; i++) {
                        double v = (U(j, i + 1) + U(j, i - 1)) * rx;
                        v = v + ry * (U(j + 1, i) + U(j - 1, i));
                        t[i] = v + rc * U(j, i);
                    }
                }
                for (j = 1; j <= rows; j++)
                    memcpy(&U(j, 1), tmp + (size_t)(j - 1) * nx, sizeof(double) * (size_t)nx);
            }
            for (j = 1; j <= rows; j++)
                for (i = 1; i <= nx; i++)
                    ylocal[(size_t)(j - 1) * nx + (i - 1)] = (float)(U(j, i) / cfg.scale);
        }
        if (!parts)
            MPI_Gatherv(ylocal, rows * nx, MPI_FLOAT, y, counts, displs, MPI_FLOAT, 0,
                        MPI_COMM_WORLD);
        if (client) { /* rank 0 with the whole field, or every rank with its share */
            int64_t xshape[1], yshape[1];
            lo_field fields[2];
            xshape[0] = rank == 0 ? 6 : 0;
            yshape[0] = parts ? (int64_t)rows * nx : (int64_t)cfg.ny * nx;
            x[5] = (float)((double)k / cfg.n_steps);
            fields[0].name = "x";
            fields[0].dtype = LO_FLOAT32;
            fields[0].ndim = 1;
            fields[0].shape = xshape;
            fields[0].data = x;
            fields[1].name = "y";
            fields[1].dtype = LO_FLOAT32;
            fields[1].ndim = 1;
            fields[1].shape = yshape;
            fields[1].data = parts ? ylocal : y;
            if (lo_send_step(client, 2, fields) != 0) {
                fprintf(stderr, "heat2d: %s\n", lo_last_error());
                MPI_Abort(MPI_COMM_WORLD, 2);
            }
        }
    }
#undef U
    if (client && lo_close(client) != 0) { /* client is NULL after an abort */
        fprintf(stderr, "heat2d: %s\n", lo_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    free(u);
    free(tmp);
    free(ylocal);
    free(y);
    free(counts);
    free(displs);
    MPI_Finalize();
    return status;
}
