/*
 * lo_ext_gate: a light external program for tests and benchmarks, on the C client.
 *
 *   lo_ext_gate GATE N_STEPS N_FLOATS STEP_MS
 *
 * Connects, sends step 0, then (unless GATE is "-") waits until one byte can be read from the
 * named pipe GATE (the test writes one byte per run once every run is connected), then sends
 * the other steps, one every STEP_MS milliseconds, and closes. Step k carries "x", float32
 * {theta[0], k}, and "y", N_FLOATS float32 values theta[0] + k.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lightning_online.h"

static void pause_ms(double ms)
{
    struct timespec t;
    if (ms <= 0) return;
    t.tv_sec = (time_t)(ms / 1000);
    t.tv_nsec = (long)((ms - 1000.0 * (double)t.tv_sec) * 1e6);
    while (nanosleep(&t, &t) != 0) {
    }
}

int main(int argc, char **argv)
{
    double theta[8];
    int n_steps, n_floats, k, i;
    double step_ms;
    float *y;
    lo_client *c;
    if (argc != 5) {
        fprintf(stderr, "usage: lo_ext_gate GATE N_STEPS N_FLOATS STEP_MS\n");
        return 2;
    }
    n_steps = atoi(argv[2]);
    n_floats = atoi(argv[3]);
    step_ms = atof(argv[4]);
    if (lo_parameters(theta, 8) < 1) {
        fprintf(stderr, "%s\n", lo_last_error());
        return 2;
    }
    y = (float *)malloc(sizeof(float) * (size_t)(n_floats > 0 ? n_floats : 1));
    c = lo_connect();
    if (!c || !y) {
        fprintf(stderr, "%s\n", lo_last_error());
        return 2;
    }
    for (k = 0; k < n_steps; k++) {
        float x[2];
        int64_t shape_x[1] = {2}, shape_y[1];
        lo_field f[2];
        x[0] = (float)theta[0];
        x[1] = (float)k;
        shape_y[0] = n_floats;
        for (i = 0; i < n_floats; i++) y[i] = (float)(theta[0] + k);
        f[0].name = "x";
        f[0].dtype = LO_FLOAT32;
        f[0].ndim = 1;
        f[0].shape = shape_x;
        f[0].data = x;
        f[1].name = "y";
        f[1].dtype = LO_FLOAT32;
        f[1].ndim = 1;
        f[1].shape = shape_y;
        f[1].data = y;
        if (k > 0) pause_ms(step_ms);
        if (lo_send_step(c, 2, f) != 0) {
            fprintf(stderr, "%s\n", lo_last_error());
            return 1;
        }
        if (k == 0 && strcmp(argv[1], "-") != 0) {
            char b;
            int fd = open(argv[1], O_RDONLY);
            if (fd < 0 || read(fd, &b, 1) != 1) {
                perror("lo_ext_gate: the gate");
                return 1;
            }
            close(fd);
        }
    }
    free(y);
    return lo_close(c) == 0 ? 0 : 1;
}
