/*
 * melissa_heat.c - an MPI heat solver instrumented for Melissa (melissa_init, melissa_send,
 * melissa_finalize; nothing of lightning_online in the source), to show and test that such a
 * solver streams into an OnlineDataModule when compiled against lightning_online's
 * melissa_api.h and library:
 *
 *   mpicc $(python -m lightning_online.client --cflags) melissa_heat.c \
 *       $(python -m lightning_online.client --libs) -o melissa_heat
 *   (or: python -m lightning_online.client --build-example melissa_heat -o build/melissa_heat)
 *   ExternalSolver(["build/melissa_heat", "{0}", "{1}", "{2}", "{3}", "{4}", "32", "32", "100"],
 *                  fields=["x", "temperature", "west"], n_procs=4)
 *
 * As Melissa passes them, the parameters come on the command line: T0 T_left T_right T_bottom
 * T_top, then optionally nx ny n_steps (default 32 32 100). The scheme is heat2d.c's (the
 * explicit finite differences of lightning_online.solvers.Heat2D, alpha = 1 up to t = 0.2, the
 * ny rows split over the ranks); per output step each rank sends two fields:
 *   "temperature": its rows of the interior field (rows * nx doubles, unscaled);
 *   "west": the temperature of its rows' first interior column (rows doubles).
 * The training side receives them concatenated over the ranks (the whole field, C order
 * (ny, nx), and the ny values of the west column), after "x" = [T0..T_top, step index].
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "melissa_api.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#else
#pragma STDC FP_CONTRACT OFF
#endif

int main(int argc, char **argv)
{
    int rank, size, nx = 32, ny = 32, n_steps = 100, rows, j0, n_active, up, down, m, k, s, i, j;
    double theta[5], hx, hy, dt_max, dt, rx, ry, rc, *u, *tmp, *west;
    MPI_Comm comm;

    MPI_Init(&argc, &argv);
    MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (argc != 6 && argc != 9) {
        if (rank == 0)
            fprintf(stderr, "usage: melissa_heat T0 T_left T_right T_bottom T_top [nx ny n_steps]\n");
        MPI_Finalize();
        return 1;
    }
    for (i = 0; i < 5; i++) theta[i] = atof(argv[1 + i]);
    if (argc == 9) {
        nx = atoi(argv[6]);
        ny = atoi(argv[7]);
        n_steps = atoi(argv[8]);
    }

    n_active = size < ny ? size : ny;
    rows = ny / size + (rank < ny % size);
    j0 = rank * (ny / size) + (rank < ny % size ? rank : ny % size);
    down = rank > 0 && rank < n_active ? rank - 1 : MPI_PROC_NULL;
    up = rank + 1 < n_active ? rank + 1 : MPI_PROC_NULL;

    hx = 1.0 / (nx + 1);
    hy = 1.0 / (ny + 1);
    dt_max = 1.0 / (2.0 * 1.0 * (1.0 / (hx * hx) + 1.0 / (hy * hy)));
    m = (int)ceil(0.2 / n_steps / (0.9 * dt_max));
    if (m < 1) m = 1;
    dt = 0.2 / n_steps / m;
    rx = 1.0 * dt * ((double)(nx + 1) * (nx + 1));
    ry = 1.0 * dt * ((double)(ny + 1) * (ny + 1));
    rc = 1.0 - 2.0 * rx - 2.0 * ry;

    u = (double *)malloc(sizeof(double) * (size_t)(rows + 2) * (size_t)(nx + 2));
    tmp = (double *)malloc(sizeof(double) * ((size_t)rows * nx + 1));
    west = (double *)malloc(sizeof(double) * ((size_t)rows + 1));
    if (!u || !tmp || !west) MPI_Abort(comm, 2);
#define U(a, b) u[(size_t)(a) * (size_t)(nx + 2) + (size_t)(b)]
    for (j = 0; j < rows + 2; j++) {
        for (i = 1; i <= nx; i++) U(j, i) = theta[0];
        U(j, 0) = theta[1];
        U(j, nx + 1) = theta[2];
    }
    if (rows > 0 && j0 == 0)
        for (i = 1; i <= nx; i++) U(0, i) = theta[3];
    if (rows > 0 && j0 + rows == ny)
        for (i = 1; i <= nx; i++) U(rows + 1, i) = theta[4];

    /* Melissa's calls: one init per field over the solver's communicator, local sizes. */
    melissa_init("temperature", rows * nx, comm);
    melissa_init("west", rows, comm);

    for (k = 1; k <= n_steps; k++) {
        for (s = 0; s < m && rows > 0; s++) {
            MPI_Sendrecv(&U(rows, 1), nx, MPI_DOUBLE, up, 0, &U(0, 1), nx, MPI_DOUBLE, down, 0,
                         comm, MPI_STATUS_IGNORE);
            MPI_Sendrecv(&U(1, 1), nx, MPI_DOUBLE, down, 1, &U(rows + 1, 1), nx, MPI_DOUBLE, up,
                         1, comm, MPI_STATUS_IGNORE);
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
        for (j = 1; j <= rows; j++) {
            memcpy(tmp + (size_t)(j - 1) * nx, &U(j, 1), sizeof(double) * (size_t)nx);
            west[j - 1] = U(j, 1);
        }
        /* In any order: the step goes once both fields were given. */
        melissa_send("west", west);
        melissa_send("temperature", tmp);
    }
#undef U
    melissa_finalize();
    free(u);
    free(tmp);
    free(west);
    MPI_Comm_free(&comm);
    MPI_Finalize();
    return 0;
}
