/*
 * melissa_api.c - Melissa's client calls (melissa_api.h) over lightning_online's C client.
 *
 * Every rank of the solver's communicator is one sender ("part" rank of size) of the run; the
 * fields of a time step are kept (copied) until the last one is given, then sent as one step
 * of the C client, the last field straight from the caller's array.
 */
#include "melissa_api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lightning_online.h"

#define NAME_BYTES 48 /* as the wire: 1 to 47 bytes and a NUL */
#define MAX_PARAMETERS 1024
#define DEFAULT_INPUT "x"
#define ENV_INPUT "LIGHTNING_ONLINE_MELISSA_INPUT"

typedef struct {
    char name[NAME_BYTES];
    int size;
    int sent;
    double *copy; /* the values given for the current step */
} field;

static struct {
    int connected, finalized;
    MPI_Comm comm;
    int rank, size;
    lo_client *client;
    int n_fields, n_sent;
    long long steps;
    field fields[LO_MAX_FIELDS];
    char input[NAME_BYTES]; /* "" when no input field is sent */
    int n_parameters;
    double *x; /* parameters, then the step index (rank 0) */
} S;

/* Report to stderr and to the training side (when connected), then end every rank. */
static void fail(int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "melissa_api (lightning_online), rank %d: %s\n", S.rank, msg);
    fflush(stderr);
    if (S.client) {
        lo_abort(S.client, msg);
        S.client = NULL;
    }
    MPI_Abort(S.connected ? S.comm : MPI_COMM_WORLD, code);
    exit(code); /* not reached */
}

/* Names of the fields not given yet in this step, for messages. */
static const char *missing(void)
{
    static char text[LO_MAX_FIELDS * (NAME_BYTES + 2)];
    int i;
    text[0] = '\0';
    for (i = 0; i < S.n_fields; i++) {
        if (S.fields[i].sent) continue;
        if (text[0]) strcat(text, ", ");
        strcat(text, S.fields[i].name);
    }
    return text;
}

static void connect_all(MPI_Comm comm)
{
    int initialized = 0, failed, n;
    const char *input = getenv(ENV_INPUT);

    MPI_Initialized(&initialized);
    if (!initialized) fail(1, "melissa_init called before MPI_Init");
    MPI_Comm_dup(comm, &S.comm);
    MPI_Comm_rank(S.comm, &S.rank);
    MPI_Comm_size(S.comm, &S.size);
    S.connected = 1;
    if (!input) input = DEFAULT_INPUT;
    if (strlen(input) >= NAME_BYTES)
        fail(1, "%s=\"%s\" is longer than %d bytes", ENV_INPUT, input, NAME_BYTES - 1);
    strcpy(S.input, input);

    /* Every rank connects; all learn whether one could not, and then end together. */
    S.client = lo_connect_part(S.rank, S.size);
    if (!S.client)
        fprintf(stderr, "melissa_api (lightning_online), rank %d: %s\n", S.rank,
                lo_last_error());
    failed = S.client == NULL;
    MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, S.comm);
    if (failed) {
        if (S.client) lo_abort(S.client, "melissa_init: another rank could not connect");
        S.client = NULL;
        MPI_Finalize();
        exit(2);
    }
    if (S.input[0] && S.rank == 0) {
        S.x = (double *)malloc(sizeof(double) * (MAX_PARAMETERS + 1));
        if (!S.x) fail(1, "out of memory");
        n = lo_parameters(S.x, MAX_PARAMETERS);
        if (n < 0) fail(1, "melissa_init: %s", lo_last_error());
        S.n_parameters = n;
    }
}

void melissa_init(const char *field_name, const int local_vect_size, MPI_Comm comm)
{
    field *f;
    int i, size;

    if (S.finalized) fail(1, "melissa_init(\"%s\") after melissa_finalize", field_name);
    if (!S.connected) connect_all(comm);
    if (!field_name || !field_name[0] || strlen(field_name) >= NAME_BYTES)
        fail(1, "melissa_init: the field name must be 1 to %d bytes", NAME_BYTES - 1);
    MPI_Comm_size(comm, &size);
    if (size != S.size)
        fail(1, "melissa_init(\"%s\"): a communicator of %d ranks, the first field's has %d",
             field_name, size, S.size);
    if (local_vect_size < 0)
        fail(1, "melissa_init(\"%s\"): local_vect_size = %d is negative", field_name,
             local_vect_size);
    if (S.steps > 0 || S.n_sent > 0)
        fail(1, "melissa_init(\"%s\") after the first melissa_send: initialise every field "
             "first", field_name);
    if (S.input[0] && !strcmp(field_name, S.input))
        fail(1, "melissa_init(\"%s\"): the name of the input field the training side receives; "
             "set %s to another name (or to \"\" for no input field)", field_name, ENV_INPUT);
    for (i = 0; i < S.n_fields; i++)
        if (!strcmp(S.fields[i].name, field_name))
            fail(1, "melissa_init(\"%s\"): this field is already initialised", field_name);
    if (S.n_fields + (S.input[0] != 0) >= LO_MAX_FIELDS)
        fail(1, "melissa_init(\"%s\"): at most %d fields (%d with the input field)",
             field_name, LO_MAX_FIELDS - (S.input[0] != 0), LO_MAX_FIELDS);
    f = &S.fields[S.n_fields];
    strcpy(f->name, field_name);
    f->size = local_vect_size;
    f->sent = 0;
    f->copy = (double *)malloc(sizeof(double) * (size_t)(local_vect_size > 0 ? local_vect_size : 1));
    if (!f->copy) fail(1, "out of memory");
    S.n_fields++;
}

void melissa_init_f(const char *field_name, int *local_vect_size, MPI_Fint *comm)
{
    melissa_init(field_name, *local_vect_size, MPI_Comm_f2c(*comm));
}

void melissa_send(const char *field_name, const double *send_vect)
{
    lo_field fields[LO_MAX_FIELDS];
    int64_t shapes[LO_MAX_FIELDS];
    field *f = NULL;
    int i, n = 0;

    if (S.finalized) fail(1, "melissa_send(\"%s\") after melissa_finalize", field_name);
    if (!S.connected) fail(1, "melissa_send(\"%s\") before melissa_init", field_name);
    for (i = 0; i < S.n_fields; i++)
        if (!strcmp(S.fields[i].name, field_name)) f = &S.fields[i];
    if (!f) fail(1, "melissa_send(\"%s\"): no such field was initialised", field_name);
    if (f->sent)
        fail(1, "melissa_send(\"%s\"): sent twice in time step %lld; not sent yet: %s",
             field_name, S.steps, missing());
    if (f->size > 0 && !send_vect) fail(1, "melissa_send(\"%s\"): values are NULL", field_name);
    f->sent = 1;
    S.n_sent++;
    if (S.n_sent < S.n_fields) { /* keep it until the step is complete */
        if (f->size > 0) memcpy(f->copy, send_vect, sizeof(double) * (size_t)f->size);
        return;
    }
    if (S.input[0]) {
        shapes[n] = S.rank == 0 ? S.n_parameters + 1 : 0;
        if (S.rank == 0) S.x[S.n_parameters] = (double)S.steps;
        fields[n].name = S.input;
        fields[n].dtype = LO_FLOAT64;
        fields[n].ndim = 1;
        fields[n].shape = &shapes[n];
        fields[n].data = S.x;
        n++;
    }
    for (i = 0; i < S.n_fields; i++, n++) {
        field *g = &S.fields[i];
        shapes[n] = g->size;
        fields[n].name = g->name;
        fields[n].dtype = LO_FLOAT64;
        fields[n].ndim = 1;
        fields[n].shape = &shapes[n];
        fields[n].data = g == f ? (const void *)send_vect : (const void *)g->copy;
        g->sent = 0;
    }
    S.n_sent = 0;
    if (lo_send_step(S.client, n, fields) != 0) fail(2, "%s", lo_last_error());
    S.steps++;
}

void melissa_finalize(void)
{
    int i;
    if (!S.connected || !S.client) return;
    if (S.n_sent > 0) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "melissa_finalize: time step %lld is incomplete: not sent: %s", S.steps,
                 missing());
        fprintf(stderr, "melissa_api (lightning_online), rank %d: %s\n", S.rank, msg);
        lo_abort(S.client, msg);
    } else if (lo_close(S.client) != 0) {
        fprintf(stderr, "melissa_api (lightning_online), rank %d: %s\n", S.rank,
                lo_last_error());
    }
    S.client = NULL;
    for (i = 0; i < S.n_fields; i++) free(S.fields[i].copy);
    free(S.x);
    S.x = NULL;
    S.n_fields = 0;
    MPI_Comm_free(&S.comm);
    S.connected = 0;
    S.finalized = 1;
}
