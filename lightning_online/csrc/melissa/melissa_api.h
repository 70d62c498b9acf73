/*
 * melissa_api.h - Melissa's client calls over lightning_online's C client: a solver
 * instrumented for Melissa streams into an OnlineDataModule (through an ExternalSolver) when it
 * is recompiled against this header and library, with no change to its source.
 *
 *   melissa_init(name, local_vect_size, comm)  once per field, before the first send; the
 *                                              first call connects every rank of comm (each
 *                                              rank is a sender, "part" rank of size)
 *   melissa_send(name, values)                 this rank's local_vect_size doubles of the
 *                                              field for the current time step; the step is
 *                                              sent when every initialised field was given
 *   melissa_finalize()                         the run is complete (CLOSE); before
 *                                              MPI_Finalize
 *
 * What the training side receives per time step: one float64 field per initialised field,
 * named as given, the concatenation of the ranks' local vectors in rank order (size: the sum
 * of the local sizes), and first, unless LIGHTNING_ONLINE_MELISSA_INPUT is set to "", a
 * float64 field "x" (or the name in LIGHTNING_ONLINE_MELISSA_INPUT) = [the run's parameters...,
 * the time step index 0, 1, ...], the input of a surrogate. The parameters also reach the
 * program as Melissa passes them, on its command line: ExternalSolver(["solver", "{0}",
 * "{1}", ...], ...). See docs/melissa.md.
 *
 * Errors (a field sent twice in a step, an unknown field, a send before any init, a lost
 * connection): the message goes to stderr and to the training log (the run fails), and the
 * program ends with MPI_Abort (exit code 1, or 2 when the connection broke). When some rank
 * cannot connect, every rank exits 2 from the first melissa_init (after MPI_Finalize).
 *
 * Flags: $(python -m lightning_online.client --cflags) and --libs (which builds the library
 * libmelissa_api.a once, with mpicc, into a cache folder):
 *   mpicc $(python -m lightning_online.client --cflags) solver.c \
 *       $(python -m lightning_online.client --libs) -o solver
 */
#ifndef MELISSA_API_H
#define MELISSA_API_H

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

void melissa_init(const char *field_name, const int local_vect_size, MPI_Comm comm);

/* From Fortran (melissa_api.f90 declares the interfaces): a NUL-terminated name, and the
 * communicator's Fortran handle. */
void melissa_init_f(const char *field_name, int *local_vect_size, MPI_Fint *comm);

void melissa_send(const char *field_name, const double *send_vect);

void melissa_finalize(void);

#ifdef __cplusplus
}
#endif

#endif /* MELISSA_API_H */
