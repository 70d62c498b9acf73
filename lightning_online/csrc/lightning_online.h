/*
 * lightning_online.h - C client of lightning_online: stream the time steps of a solver
 * program to the training process that launched it (an ExternalSolver).
 *
 * Environment (set by ExternalSolver for each run):
 *   LIGHTNING_ONLINE_ADDRESS     host:port to connect to: a host name or an IPv4 address and
 *                                the port, or an IPv6 address in brackets ([::1]:5000)
 *   LIGHTNING_ONLINE_TOKEN       ASCII token proving the connection belongs to this run
 *   LIGHTNING_ONLINE_PARAMETERS  the run's parameters, comma-separated floats
 *
 * Typical use, one sender (with MPI: one rank connects and sends, the others gather to it):
 *
 *   double theta[5];
 *   if (lo_parameters(theta, 5) != 5) ...;
 *   lo_client *c = lo_connect();
 *   if (!c) { fprintf(stderr, "%s\n", lo_last_error()); exit(2); }
 *   for (k = 0; k < n; k++) {
 *       int64_t shape[1] = {n_cells};
 *       lo_field f[1] = {{"u", LO_FLOAT64, 1, shape, u}};
 *       if (lo_send_step(c, 1, f) != 0) ...;
 *   }
 *   lo_close(c);                   (or lo_abort(c, "why") when the run fails)
 *
 * Several senders ("parts"): every MPI rank sends its own share of each step, no gather:
 *
 *   MPI_Comm_rank(MPI_COMM_WORLD, &rank);
 *   MPI_Comm_size(MPI_COMM_WORLD, &size);
 *   lo_client *c = lo_connect_part(rank, size);
 *   ... each rank: lo_send_step(c, 1, f) with its own rows, then lo_close(c) ...
 *
 * The receiving side reads step k from every part in part order, and each field of the step is
 * the concatenation of the parts' arrays along their first axis, in part order: every part
 * sends the same field names, dtypes and trailing extents every step, and a part without a
 * share of a field sends it with a zero-length first extent (e.g. shape {0}, data NULL). Each
 * part sends every step, and ends with its own lo_close (or lo_abort).
 *
 * Compile the library source together with the program:
 *
 *   mpicc -O2 -I$(python -m lightning_online.client --include) my_solver.c \
 *       $(python -m lightning_online.client --source) -o my_solver -lm
 *
 * Wire protocol (the reference is lightning_online/_wire/tcp.py): one TCP connection per part,
 * messages from the program only, no replies, everything little-endian. Each message is a
 * 32-byte header
 *   uint32 magic 0x314E4F4C, uint16 version 2, uint16 kind (1 HELLO, 2 STEP, 3 CLOSE, 4 ERROR),
 *   uint32 n_fields, uint32 reserved 0, int64 step, uint64 payload_bytes
 * then the payload: HELLO (first) = uint32 part, uint32 n_parts, then the token (a single
 * sender is part 0 of 1); STEP = n_fields descriptors of 128 bytes
 *   char name[48] (NUL-padded), int32 dtype, int32 ndim, int64 shape[8], uint64 nbytes
 * followed by each field's raw bytes (C order), zero-padded to a multiple of 8; CLOSE = none
 * (step = number of steps this part sent); ERROR = UTF-8 message. Each part counts its own
 * steps from 0. A connection that ends without CLOSE or ERROR is reported as a crashed run.
 *
 * Functions that fail return NULL or -1 and leave the reason in lo_last_error(). A client is
 * used by one thread at a time; the library has no other global state.
 */
#ifndef LIGHTNING_ONLINE_H
#define LIGHTNING_ONLINE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* dtype codes: the index in lightning_online._wire.samples.DTYPES (native little-endian data). */
#define LO_FLOAT32 0
#define LO_FLOAT64 1
#define LO_FLOAT16 2
#define LO_INT8 3
#define LO_INT16 4
#define LO_INT32 5
#define LO_INT64 6
#define LO_UINT8 7
#define LO_BOOL 8 /* one byte per value, 0 or 1 */
#define LO_COMPLEX64 9 /* pairs of float32 (re, im) */
#define LO_COMPLEX128 10 /* pairs of float64 (re, im) */

#define LO_MAX_FIELDS 16
#define LO_MAX_DIMS 8

typedef struct lo_client lo_client; /* opaque */

/* One named array of a step. name: 1 to 47 bytes of UTF-8, unique within the step; shape:
 * ndim non-negative extents (may be NULL when ndim == 0, a scalar); data: prod(shape) values
 * of the dtype, contiguous in C order (may be NULL when there are none). */
typedef struct {
    const char *name;
    int dtype;
    int ndim;
    const int64_t *shape;
    const void *data;
} lo_field;

/* Connect to LIGHTNING_ONLINE_ADDRESS and say HELLO with LIGHTNING_ONLINE_TOKEN, as the only
 * sender of the run (part 0 of 1). NULL on failure. */
lo_client *lo_connect(void);

/* Same with an explicit "host:port" (or "[v6]:port") address and token (part 0 of 1).
 * NULL on failure. */
lo_client *lo_connect_to(const char *address, const char *token);

/* Connect as part `part` of `n_parts` senders of the run (from the environment, as
 * lo_connect): with MPI, each rank calls lo_connect_part(rank, size). Requires
 * 0 <= part < n_parts and 1 <= n_parts <= 65536. NULL on failure. */
lo_client *lo_connect_part(int part, int n_parts);

/* Same with an explicit "host:port" address and token. NULL on failure. */
lo_client *lo_connect_to_part(const char *address, const char *token, int part, int n_parts);

/* Parse LIGHTNING_ONLINE_PARAMETERS into theta[0..max-1]. Returns the number of values, or -1
 * when the variable is missing, does not parse, or holds more than max values. */
int lo_parameters(double *theta, int max);

/* Send one step (index counted by the client from 0). The arguments are checked before
 * anything is sent, so a rejected step leaves the connection usable. 0 ok, -1 error. */
int lo_send_step(lo_client *c, int n_fields, const lo_field *fields);

/* Send CLOSE (the run is complete), close the connection and free the client.
 * 0 ok, -1 error (the client is freed either way). */
int lo_close(lo_client *c);

/* Send ERROR with message (the run failed), close the connection and free the client.
 * 0 ok, -1 error (the client is freed either way). */
int lo_abort(lo_client *c, const char *message);

/* Reason of the last failure in this thread ("" if none). */
const char *lo_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* LIGHTNING_ONLINE_H */
