/*
 * send.c: upload one file with the bigtransfer C API.
 *
 *     usage: send HOST PORT FILE
 *
 * Shows progress on standard error; Ctrl-C cancels cleanly (the server keeps
 * what it received, and running the same command again resumes). Exit
 * status: 0 on success, 2 on a usage error, 1 on any other failure.
 *
 * Build (from the repository root, after `cargo build -p bigtransfer-ffi --release`):
 *     cc -Wall -Wextra -Iinclude ffi/examples/send.c -o send \
 *        -Ltarget/release -lbigtransfer -Wl,-rpath,"$PWD/target/release"
 *
 * Not for: anything beyond showing the API; the `bigtransfer` command is the
 * real client.
 */
#include "bigtransfer.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* Prints the percentage when it changes; returns non-zero after Ctrl-C. */
static int on_progress(uint64_t done, uint64_t total, void *user) {
    int *last_percent = user;
    int percent = total == 0 ? 100 : (int)(done * 100 / total);
    if (percent != *last_percent) {
        *last_percent = percent;
        fprintf(stderr, "\r%3d%% (%llu of %llu bytes)", percent, (unsigned long long)done,
                (unsigned long long)total);
    }
    return interrupted;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s HOST PORT FILE\n(libbigtransfer %s)\n",
                argc > 0 ? argv[0] : "send", bt_version());
        return 2;
    }
    char *end = NULL;
    errno = 0;
    unsigned long port = strtoul(argv[2], &end, 10);
    if (errno != 0 || end == argv[2] || *end != '\0' || port == 0 || port > 65535) {
        fprintf(stderr, "send: %s is not a TCP port (1-65535)\n", argv[2]);
        return 2;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    bt_send_options *options = bt_send_options_new();
    if (options == NULL) {
        fprintf(stderr, "send: %s\n", bt_last_error_message());
        return 1;
    }
    bt_send_options_set_retries(options, 10);
    bt_send_options_set_connect_timeout_ms(options, 10000);

    int last_percent = -1;
    bt_send_result result;
    bt_status status = bt_send_file(argv[1], (uint16_t)port, argv[3], options, on_progress,
                                    &last_percent, &result);
    fputc('\n', stderr);

    if (status != BT_OK) {
        /* Read the message before any other call of the API: the next call
         * that returns a status replaces it (see bt_last_error_message). */
        fprintf(stderr, "send: %s: %s\n", bt_status_name(status), bt_last_error_message());
        bt_send_options_free(options);
        if (status == BT_CANCELLED || status == BT_CONNECTION_LOST || status == BT_TIMED_OUT) {
            fprintf(stderr, "send: run the same command again to resume\n");
        }
        return 1;
    }
    bt_send_options_free(options);
    printf("sent %s: %llu bytes, CRC-32 %08x, resumed from %llu, %llu bytes over the network, "
           "%u attempt(s)\n",
           argv[3], (unsigned long long)result.filesize, (unsigned)result.crc32,
           (unsigned long long)result.resumed_from, (unsigned long long)result.bytes_sent,
           (unsigned)result.attempts);
    return 0;
}
