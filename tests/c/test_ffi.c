/*
 * test_ffi.c: end-to-end test of the bigtransfer C API, compiled against
 * include/bigtransfer.h and linked with libbigtransfer (static or shared).
 *
 * It runs a server through the C API in a thread on 127.0.0.1 (port 0) in a
 * temporary directory, uploads generated files to it through the C API and
 * checks results, progress figures, cancel-and-resume, CRC-32s, the stored
 * bytes, and the error paths; then authentication (servers with a token,
 * right / wrong / missing tokens, a legacy client admitted by allow_legacy)
 * and a free-space reserve on servers of their own; then stops the server
 * from the main thread.
 * Every wait is bounded (socket timeouts, a timed join, and an alarm as a
 * last resort). Its last line is "N passed, N failed"; it exits non-zero on
 * any failure.
 *
 * Not for: testing the engine's protocol corner cases (the Rust tests of
 * bigtransfer-core do that).
 */
#define _GNU_SOURCE
#include "bigtransfer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int passed;
static int failed;

#define CHECK(cond, what) check_at((cond) != 0, (what), __LINE__)

static void check_at(int ok, const char *what, int line) {
    if (ok) {
        passed++;
        printf("ok   %s\n", what);
    } else {
        failed++;
        printf("FAIL %s (test_ffi.c:%d; last error: \"%s\")\n", what, line,
               bt_last_error_message());
    }
    fflush(stdout);
}

/* ---- files ------------------------------------------------------------ */

/* Writes `size` pseudo-random bytes (xorshift64 from `seed`) to `path`. */
static int write_file(const char *path, size_t size, uint64_t seed) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return -1;
    }
    unsigned char buf[65536];
    uint64_t x = seed | 1;
    size_t left = size;
    while (left > 0) {
        size_t n = left < sizeof buf ? left : sizeof buf;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = (unsigned char)(x >> 24);
        }
        if (fwrite(buf, 1, n, f) != n) {
            fclose(f);
            return -1;
        }
        left -= n;
    }
    return fclose(f) == 0 ? 0 : -1;
}

/* 1 if the two files exist and hold the same bytes. */
static int same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb");
    FILE *fb = fopen(b, "rb");
    int same = fa != NULL && fb != NULL;
    static unsigned char ba[65536], bb[65536];
    while (same) {
        size_t na = fread(ba, 1, sizeof ba, fa);
        size_t nb = fread(bb, 1, sizeof bb, fb);
        if (na != nb || memcmp(ba, bb, na) != 0) {
            same = 0;
        } else if (na == 0) {
            break;
        }
    }
    if (fa != NULL) {
        fclose(fa);
    }
    if (fb != NULL) {
        fclose(fb);
    }
    return same;
}

/* An independent, bitwise CRC-32 (zlib polynomial) of a file, to check the
 * library's. Sets *ok to 0 if the file cannot be read. */
static uint32_t crc32_reference(const char *path, int *ok) {
    FILE *f = fopen(path, "rb");
    uint32_t crc = 0xFFFFFFFFu;
    *ok = f != NULL;
    if (f == NULL) {
        return 0;
    }
    static unsigned char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < n; i++) {
            crc ^= buf[i];
            for (int k = 0; k < 8; k++) {
                crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
            }
        }
    }
    fclose(f);
    return crc ^ 0xFFFFFFFFu;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- callbacks ---------------------------------------------------------- */

struct progress {
    unsigned long calls;
    uint64_t last_done;
    uint64_t total;
    int monotonic;          /* done never went down, never above total */
    int total_constant;     /* total the same in every call */
    uint64_t cancel_at;     /* cancel once done >= this (0: never) */
    int cancel_first;       /* cancel at the very first call */
    uint64_t cancelled_at;  /* done when it cancelled */
};

static void progress_init(struct progress *p) {
    memset(p, 0, sizeof *p);
    p->monotonic = 1;
    p->total_constant = 1;
}

/* What a tree transfer reported: calls, the last counts, a file name seen. */
struct tree_seen {
    unsigned long calls;
    uint64_t files_done, files_total, bytes_total;
    int named;    /* some call named a file of the tree */
    int counts_ok; /* files_done never above files_total */
};

static int on_tree(const bt_tree_progress *p, void *user) {
    struct tree_seen *t = user;
    t->calls++;
    t->files_done = p->files_done;
    t->files_total = p->files_total;
    t->bytes_total = p->bytes_total;
    if (p->path != NULL && strncmp(p->path, "tree/", 5) == 0)
        t->named = 1;
    if (p->files_done > p->files_total && p->files_total != 0)
        t->counts_ok = 0;
    return 0;
}

static int on_progress(uint64_t done, uint64_t total, void *user) {
    struct progress *p = user;
    if (p->calls > 0 && total != p->total) {
        p->total_constant = 0;
    }
    if (done < p->last_done || done > total) {
        p->monotonic = 0;
    }
    p->calls++;
    p->last_done = done;
    p->total = total;
    if (p->cancel_first || (p->cancel_at > 0 && done >= p->cancel_at)) {
        p->cancelled_at = done;
        return 1;
    }
    return 0;
}

static unsigned long log_lines; /* updated atomically from server threads */

static void on_log(const char *line, void *user) {
    (void)user;
    __atomic_fetch_add(&log_lines, 1, __ATOMIC_SEQ_CST);
    if (getenv("BT_TEST_VERBOSE") != NULL) {
        fprintf(stderr, "server: %s\n", line);
    }
}

/* ---- the server thread -------------------------------------------------- */

struct serving {
    bt_server *server;
    bt_status status;
};

static void *serve_main(void *arg) {
    struct serving *s = arg;
    s->status = bt_server_serve(s->server);
    return NULL;
}

/* The server a SIGUSR1 handler stops. */
static bt_server *volatile signal_server;

static void on_sigusr1(int sig) {
    (void)sig;
    bt_server_stop(signal_server);
}

/* A TCP port on 127.0.0.1 that nothing listens on (bound, then closed). */
static uint16_t closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    uint16_t port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0) {
        port = ntohs(a.sin_port);
    }
    if (fd >= 0) {
        close(fd);
    }
    return port;
}

struct listed {
    int count;
    int a_found;
    uint32_t a_crc;
};

static int on_entry(const bt_list_entry *e, void *user) {
    struct listed *l = user;
    l->count++;
    if (strcmp(e->name, "a.bin") == 0 && !e->partial && e->crc32_known) {
        l->a_found = 1;
        l->a_crc = e->crc32;
    }
    return 0;
}

struct dirs_seen {
    int dirs;
    int others;
    uint64_t d_files;
    uint64_t d_size;
};

static int on_dir_entry(const bt_list_entry *e, void *user) {
    struct dirs_seen *l = user;
    if (e->kind == 2) {
        l->dirs++;
        if (strcmp(e->name, "d") == 0 && e->files_known) {
            l->d_files = e->files;
            l->d_size = e->size;
        }
    } else if (e->kind != 0 || e->partial) {
        l->others++;
    }
    return 0;
}

static int message_set(void) {
    const char *m = bt_last_error_message();
    return m != NULL && m[0] != '\0';
}

static int message_has(const char *part) {
    const char *m = bt_last_error_message();
    return m != NULL && strstr(m, part) != NULL;
}

static int result_zero(const bt_send_result *r) {
    return r->filesize == 0 && r->crc32 == 0 && r->resumed_from == 0 && r->bytes_sent == 0 &&
           r->attempts == 0 && r->protocol == 0 && r->bytes_hashed == 0 && r->bytes_read == 0 &&
           r->blocks_resent == 0 && r->encrypted == 0 && r->new_host_key == 0 &&
           r->server_fingerprint[0] == '\0';
}

/* Makes a server from `config` and serves it on a new thread; NULL if either
 * fails (then nothing is left running). */
static bt_server *start_server(const bt_server_config *config, struct serving *serving,
                               pthread_t *thread, uint16_t *port) {
    bt_server *server = NULL;
    *port = 0;
    if (bt_server_new(config, &server) != BT_OK) {
        return NULL;
    }
    serving->server = server;
    serving->status = BT_PANIC;
    if (bt_server_port(server, port) != BT_OK ||
        pthread_create(thread, NULL, serve_main, serving) != 0) {
        bt_server_free(server);
        return NULL;
    }
    return server;
}

/* Stops a server from start_server, joins its thread (30 s at most) and
 * frees it. 1 if it stopped and bt_server_serve returned BT_OK. */
static int stop_server(bt_server *server, struct serving *serving, pthread_t thread) {
    bt_server_stop(server);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    if (pthread_timedjoin_np(thread, NULL, &deadline) != 0) {
        printf("%d passed, %d failed\n", passed, failed + 1);
        _exit(1); /* the thread still uses the server: do not free it */
    }
    int ok = serving->status == BT_OK;
    bt_server_free(server);
    return ok;
}

int main(void) {
    /* Last-resort bound on the whole run (valgrind included): SIGALRM kills. */
    alarm(300);

    const char *tmpdir = getenv("TMPDIR");
    char root[4096];
    snprintf(root, sizeof root, "%s/bt-ffi-test-XXXXXX",
             tmpdir != NULL && tmpdir[0] != '\0' ? tmpdir : "/tmp");
    if (mkdtemp(root) == NULL) {
        perror("mkdtemp");
        printf("0 passed, 1 failed\n");
        return 1;
    }
    char src_dir[4200], store_dir[4200];
    snprintf(src_dir, sizeof src_dir, "%s/src", root);
    snprintf(store_dir, sizeof store_dir, "%s/store", root);
    mkdir(src_dir, 0700);

    /* -- version and names ------------------------------------------------ */
    const char *version = bt_version();
    CHECK(version != NULL && version[0] != '\0', "bt_version is a non-empty string");
    CHECK(strcmp(bt_status_name(BT_CANCELLED), "cancelled") == 0, "bt_status_name(BT_CANCELLED)");
    CHECK(strcmp(bt_status_name(12345), "unknown") == 0, "bt_status_name of a non-code");

    /* -- the server ------------------------------------------------------- */
    bt_server_config *config = bt_server_config_new();
    CHECK(config != NULL, "bt_server_config_new");
    bt_server *server = NULL;
    CHECK(bt_server_new(config, &server) == BT_INVALID_INPUT && server == NULL && message_set(),
          "bt_server_new without a directory is BT_INVALID_INPUT");
    CHECK(bt_server_config_set_bind_address(config, "not-an-ip") == BT_INVALID_INPUT &&
              message_set(),
          "a bad bind address is BT_INVALID_INPUT");
    CHECK(bt_server_config_set_max_connections(config, 0) == BT_INVALID_INPUT,
          "max_connections 0 is BT_INVALID_INPUT");
    CHECK(bt_server_config_set_store(config, "/not/a/url", NULL, NULL) == BT_INVALID_INPUT &&
              message_set() && strstr(bt_last_error_message(), "s3://") != NULL,
          "a store that is not s3:// is BT_INVALID_INPUT, in words");
    CHECK(bt_server_config_set_store(config, NULL, NULL, NULL) == BT_OK,
          "set_store NULL: back to the directory");
    CHECK(bt_server_config_set_dir(config, store_dir) == BT_OK, "set_dir");
    CHECK(bt_server_config_set_bind_address(config, "127.0.0.1") == BT_OK, "set_bind_address");
    CHECK(bt_server_config_set_port(config, 0) == BT_OK, "set_port 0");
    CHECK(bt_server_config_set_max_connections(config, 8) == BT_OK, "set_max_connections");
    CHECK(bt_server_config_set_idle_timeout_ms(config, 20000) == BT_OK, "set_idle_timeout_ms");
    CHECK(bt_server_config_set_log_callback(config, on_log, NULL) == BT_OK, "set_log_callback");
    CHECK(bt_server_new(config, &server) == BT_OK && server != NULL, "bt_server_new");
    CHECK(bt_last_error_message()[0] == '\0', "the message is empty after a success");
    if (server == NULL) {
        printf("%d passed, %d failed\n", passed, failed + 1);
        return 1;
    }
    uint16_t port = 0;
    CHECK(bt_server_port(server, &port) == BT_OK && port != 0, "bt_server_port gives the bound port");

    bt_server *second = NULL;
    CHECK(bt_server_new(config, &second) != BT_OK && second == NULL && message_set(),
          "a second server on the same directory is refused");

    struct serving serving = {server, BT_PANIC};
    pthread_t thread;
    int started = pthread_create(&thread, NULL, serve_main, &serving) == 0;
    CHECK(started, "server thread started");

    bt_send_options *options = bt_send_options_new();
    CHECK(options != NULL, "bt_send_options_new");
    CHECK(bt_send_options_set_retries(options, 2) == BT_OK, "set_retries");
    CHECK(bt_send_options_set_connect_timeout_ms(options, 3000) == BT_OK, "set_connect_timeout_ms");
    CHECK(bt_send_options_set_io_timeout_ms(options, 20000) == BT_OK, "set_io_timeout_ms");
    CHECK(bt_send_options_set_backoff_ms(options, 50, 200) == BT_OK, "set_backoff_ms");
    CHECK(bt_send_options_set_connect_timeout_ms(options, 0) == BT_INVALID_INPUT && message_set(),
          "a zero connect timeout is BT_INVALID_INPUT");
    CHECK(bt_send_options_set_remote_name(options, "") == BT_INVALID_INPUT,
          "an empty remote name is BT_INVALID_INPUT");
    CHECK(bt_send_options_set_compress(options, "gzip") == BT_INVALID_INPUT && message_set(),
          "an unknown compression is BT_INVALID_INPUT");
    CHECK(bt_send_options_set_compress(options, "zstd:3") == BT_OK &&
              bt_send_options_set_compress(options, NULL) == BT_OK,
          "set_compress");
    CHECK(bt_send_options_set_streams(options, "9") == BT_INVALID_INPUT && message_set(),
          "nine streams is BT_INVALID_INPUT");
    CHECK(bt_send_options_set_streams(options, "auto") == BT_OK &&
              bt_send_options_set_streams(options, "2") == BT_OK &&
              bt_send_options_set_streams(options, NULL) == BT_OK,
          "set_streams");
    /* The checksum cache inside the temporary directory, not in $HOME. */
    char cache_dir[4200];
    snprintf(cache_dir, sizeof cache_dir, "%s/cache", root);
    CHECK(bt_send_options_set_cache_dir(options, cache_dir) == BT_OK, "set_cache_dir");
    CHECK(bt_send_options_set_cache_dir(options, "") == BT_INVALID_INPUT && message_set(),
          "an empty cache directory is BT_INVALID_INPUT");

    /* -- a whole upload --------------------------------------------------- */
    const size_t size_a = 3 * 1024 * 1024 + 12345; /* no multiple of any buffer */
    char path_a[4300], stored_a[4300];
    snprintf(path_a, sizeof path_a, "%s/a.bin", src_dir);
    snprintf(stored_a, sizeof stored_a, "%s/a.bin", store_dir);
    CHECK(write_file(path_a, size_a, 0x1234) == 0, "generated a.bin");

    uint32_t crc_src = 0;
    int ref_ok = 0;
    uint32_t crc_ref = crc32_reference(path_a, &ref_ok);
    CHECK(bt_crc32_file(path_a, &crc_src) == BT_OK, "bt_crc32_file of the source");
    CHECK(ref_ok && crc_src == crc_ref, "bt_crc32_file agrees with a reference CRC-32");

    struct progress prog;
    progress_init(&prog);
    bt_send_result r;
    memset(&r, 0xAB, sizeof r);
    bt_status st = bt_send_file("127.0.0.1", port, path_a, options, on_progress, &prog, &r);
    CHECK(st == BT_OK, "bt_send_file of a.bin");
    CHECK(r.filesize == size_a, "result.filesize == size");
    CHECK(r.bytes_sent == size_a, "result.bytes_sent == size");
    CHECK(r.resumed_from == 0, "result.resumed_from == 0");
    CHECK(r.attempts == 1, "result.attempts == 1");
    CHECK(r.crc32 == crc_src, "result.crc32 == CRC-32 of the source");
    uint32_t crc_stored = 0;
    CHECK(bt_crc32_file(stored_a, &crc_stored) == BT_OK && crc_stored == r.crc32,
          "result.crc32 == CRC-32 of the stored file");
    CHECK(same_file(path_a, stored_a), "the stored file is byte-identical");
    CHECK(prog.calls > 0, "the progress callback was called");
    CHECK(prog.monotonic, "progress figures are monotonic and within total");
    CHECK(prog.total_constant && prog.total == size_a, "progress total == size");
    CHECK(prog.last_done == prog.total, "the last progress call has done == total");
    CHECK(r.protocol == 2, "result.protocol == 2 between the library's client and server");
    CHECK(r.bytes_read >= size_a && r.bytes_hashed <= r.bytes_read,
          "result.bytes_read covers the file, bytes_hashed is part of it");
    CHECK(r.blocks_resent == 0, "result.blocks_resent == 0 when nothing was damaged");
    CHECK(r.stored == 0, "result.stored == 0: a new name");
    CHECK(r.encrypted == 1, "result.encrypted == 1: TLS by default");
    CHECK(r.new_host_key == 1 && strncmp(r.server_fingerprint, "SHA256:", 7) == 0 &&
              strlen(r.server_fingerprint) == 50,
          "the first send to a server reports its new key: new_host_key == 1, server_fingerprint");
    char first_fp[64];
    memcpy(first_fp, r.server_fingerprint, sizeof first_fp);

    /* -- the same file again: nothing sent, the stored file untouched ------ */
    struct stat before, after;
    CHECK(stat(stored_a, &before) == 0, "stat of the stored file");
    st = bt_send_file("127.0.0.1", port, path_a, options, NULL, NULL, &r);
    CHECK(st == BT_OK && r.stored == 1 && r.bytes_sent == 0,
          "a re-send of the same file: result.stored == 1 (unchanged), nothing sent");
    CHECK(r.encrypted == 1 && r.new_host_key == 0 && strcmp(r.server_fingerprint, first_fp) == 0,
          "the second send: the key was pinned already (new_host_key == 0), same fingerprint");
    CHECK(stat(stored_a, &after) == 0 && after.st_ino == before.st_ino &&
              after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
              after.st_mtim.tv_nsec == before.st_mtim.tv_nsec,
          "the stored file is untouched (same inode and mtime)");

    /* -- bt_list ------------------------------------------------------------ */
    struct listed seen = {0, 0, 0};
    CHECK(bt_list("127.0.0.1", port, NULL, options, on_entry, &seen) == BT_OK,
          "bt_list of everything");
    CHECK(seen.count == 1 && seen.a_found && seen.a_crc == crc_src,
          "bt_list shows a.bin with its CRC-32");
    seen.count = 0;
    CHECK(bt_list("127.0.0.1", port, "nothing.bin", options, on_entry, &seen) == BT_OK &&
              seen.count == 0,
          "bt_list of a name not held lists nothing");
    CHECK(bt_list("127.0.0.1", port, NULL, options, NULL, NULL) == BT_INVALID_INPUT,
          "bt_list without a callback is BT_INVALID_INPUT");

    /* -- bt_list_dirs: directories with what is under them ---------------- */
    char dir_d[4300], dir_f[4400];
    snprintf(dir_d, sizeof dir_d, "%s/d", store_dir);
    snprintf(dir_f, sizeof dir_f, "%s/d/f.txt", store_dir);
    CHECK(mkdir(dir_d, 0755) == 0, "made d/ in the store");
    FILE *df = fopen(dir_f, "w");
    CHECK(df && fputs("hello", df) >= 0 && fclose(df) == 0, "wrote d/f.txt");
    struct dirs_seen ds = {0, 0, 0, 0};
    CHECK(bt_list_dirs("127.0.0.1", port, NULL, options, on_dir_entry, &ds) == BT_OK,
          "bt_list_dirs of everything");
    CHECK(ds.dirs == 1 && ds.others == 0 && ds.d_files == 1 && ds.d_size == 5,
          "bt_list_dirs shows d/ with its 1 file of 5 bytes");
    seen.count = 0;
    CHECK(bt_list("127.0.0.1", port, NULL, options, on_entry, &seen) == BT_OK &&
              seen.count == 1,
          "bt_list (no directories asked for) still lists a.bin alone");
    CHECK(unlink(dir_f) == 0 && rmdir(dir_d) == 0, "removed d/ again");

    /* -- cancel from the callback, then resume ----------------------------- */
    const size_t size_b = 4 * 1024 * 1024 + 777;
    char path_b[4300], stored_b[4300];
    snprintf(path_b, sizeof path_b, "%s/b.bin", src_dir);
    snprintf(stored_b, sizeof stored_b, "%s/b.bin", store_dir);
    CHECK(write_file(path_b, size_b, 0xBEEF) == 0, "generated b.bin");
    bt_send_options *slow = bt_send_options_new();
    CHECK(slow != NULL, "bt_send_options_new (rate-limited)");
    /* Small blocks so that the callback runs several times mid-file. */
    CHECK(bt_send_options_set_limit_rate(slow, 8 * 1024 * 1024) == BT_OK, "set_limit_rate");
    CHECK(bt_send_options_set_cache_dir(slow, cache_dir) == BT_OK, "set_cache_dir (slow)");
    CHECK(bt_send_options_set_retries(slow, 0) == BT_OK, "set_retries 0");
    CHECK(bt_send_options_set_io_timeout_ms(slow, 20000) == BT_OK, "set_io_timeout_ms (slow)");
    progress_init(&prog);
    prog.cancel_at = size_b / 3;
    st = bt_send_file("127.0.0.1", port, path_b, slow, on_progress, &prog, &r);
    CHECK(st == BT_CANCELLED, "a non-zero return from the callback gives BT_CANCELLED");
    CHECK(message_set(), "a cancelled send leaves a message");
    CHECK(result_zero(&r), "the result is zeroed on failure");
    CHECK(prog.cancelled_at >= size_b / 3 && prog.cancelled_at < size_b,
          "it cancelled in the middle of the file");
    CHECK(!exists(stored_b), "a cancelled upload is not visible under its name");
    CHECK(exists(cache_dir), "the cancelled send kept its checksums in the set_cache_dir directory");
    const uint64_t cancelled_at = prog.cancelled_at;

    /* Let the server's connection notice the close and checkpoint (bounded). */
    struct timespec pause = {0, 200 * 1000 * 1000};
    nanosleep(&pause, NULL);

    progress_init(&prog);
    st = bt_send_file("127.0.0.1", port, path_b, options, on_progress, &prog, &r);
    CHECK(st == BT_OK, "the second send of b.bin succeeds");
    printf("     (resumed from %llu of %llu bytes; cancelled at %llu)\n",
           (unsigned long long)r.resumed_from, (unsigned long long)size_b,
           (unsigned long long)cancelled_at);
    CHECK(r.resumed_from > 0, "the second send resumed (resumed_from > 0)");
    CHECK(r.resumed_from <= cancelled_at, "resumed_from <= what was sent before the cancel");
    CHECK(r.bytes_sent == size_b - r.resumed_from, "bytes_sent == size - resumed_from");
    CHECK(r.filesize == size_b, "result.filesize == size (resumed)");
    uint32_t crc_b = 0;
    CHECK(bt_crc32_file(path_b, &crc_b) == BT_OK && crc_b == r.crc32,
          "result.crc32 == CRC-32 of the source (resumed)");
    CHECK(bt_crc32_file(stored_b, &crc_stored) == BT_OK && crc_stored == r.crc32,
          "result.crc32 == CRC-32 of the stored file (resumed)");
    CHECK(same_file(path_b, stored_b), "the resumed file is byte-identical");
    CHECK(prog.monotonic && prog.last_done == size_b, "resumed progress is monotonic, ends at total");

    /* -- bt_get_file: the stored b.bin comes back, cancelled then resumed -- */
    char got_b[4300];
    snprintf(got_b, sizeof got_b, "%s/b.got", src_dir);
    bt_get_result g;
    progress_init(&prog);
    prog.cancel_at = size_b / 3;
    st = bt_get_file("127.0.0.1", port, "b.bin", got_b, slow, 0, on_progress, &prog, &g);
    CHECK(st == BT_CANCELLED && !exists(got_b),
          "a cancelled bt_get_file is BT_CANCELLED and not visible under its name");
    progress_init(&prog);
    st = bt_get_file("127.0.0.1", port, "b.bin", got_b, options, 0, on_progress, &prog, &g);
    CHECK(st == BT_OK, "bt_get_file of b.bin");
    CHECK(g.filesize == size_b && g.crc32 == r.crc32 && same_file(path_b, got_b),
          "the downloaded file is byte-identical, its CRC-32 the upload's");
    CHECK(g.resumed_from > 0 && g.bytes_received == size_b - g.resumed_from,
          "the second bt_get_file fetched only the rest");
    CHECK(g.compressed_blocks == 0 && g.wire_bytes == g.bytes_received,
          "random data comes back raw with compression auto");
    /* A compressible file put in the storage directory comes back in
     * zstd blocks at a fraction of its size on the wire. */
    char text_path[4300], text_got[4300];
    snprintf(text_path, sizeof text_path, "%s/log.txt", store_dir);
    snprintf(text_got, sizeof text_got, "%s/log.got", src_dir);
    FILE *tf = fopen(text_path, "w");
    for (int i = 0; tf && i < 120000; i++)
        fprintf(tf, "GET /item/%d status=%d\n", i * 7919 % 100000, 200 + i % 3);
    CHECK(tf && fclose(tf) == 0, "wrote log.txt into the store");
    CHECK(bt_send_options_set_compress(options, "zstd:3") == BT_OK, "set_compress for get");
    st = bt_get_file("127.0.0.1", port, "log.txt", text_got, options, 0, NULL, NULL, &g);
    CHECK(st == BT_OK && same_file(text_path, text_got), "bt_get_file of log.txt, identical");
    CHECK(g.compressed_blocks >= 1 && g.wire_bytes * 3 < g.bytes_received,
          "log.txt came compressed, under a third of its size on the wire");
    CHECK(bt_send_options_set_compress(options, NULL) == BT_OK, "compress back to auto");
    CHECK(bt_get_file("127.0.0.1", port, "b.bin", got_b, options, 0, NULL, NULL, &g) ==
              BT_INVALID_INPUT,
          "bt_get_file does not replace an existing file without force");
    CHECK(bt_get_file("127.0.0.1", port, "nope.bin", got_b, options, 1, NULL, NULL, &g) ==
                  BT_REFUSED &&
              message_has("no file"),
          "bt_get_file of a missing file is BT_REFUSED with the server's words");

    /* -- trees: bt_send_tree, then bt_get_tree into an empty directory ------ */
    char tree_dir[4300], tree_sub[4400], tree_x[4400], tree_y[4400], tree_empty[4400],
        tree_link[4400];
    snprintf(tree_dir, sizeof tree_dir, "%s/tree", src_dir);
    snprintf(tree_sub, sizeof tree_sub, "%s/sub", tree_dir);
    snprintf(tree_x, sizeof tree_x, "%s/sub/x.txt", tree_dir);
    snprintf(tree_y, sizeof tree_y, "%s/y.bin", tree_dir);
    snprintf(tree_empty, sizeof tree_empty, "%s/empty", tree_dir);
    snprintf(tree_link, sizeof tree_link, "%s/link", tree_dir);
    CHECK(mkdir(tree_dir, 0755) == 0 && mkdir(tree_sub, 0755) == 0 &&
              mkdir(tree_empty, 0750) == 0 && write_file(tree_x, 1001, 0x31) == 0 &&
              write_file(tree_y, 1500007, 0x32) == 0 && symlink("y.bin", tree_link) == 0,
          "made a tree: a nested file, a larger one, an empty directory, a symlink");
    const char *tree_paths[] = {tree_dir};
    bt_tree_result tr;
    struct tree_seen tseen = {0, 0, 0, 0, 0, 1};
    st = bt_send_tree("127.0.0.1", port, tree_paths, 1, options, on_tree, &tseen, &tr);
    char stored_y[4400];
    snprintf(stored_y, sizeof stored_y, "%s/tree/y.bin", store_dir);
    CHECK(st == BT_OK && tr.files == 2 && tr.dirs == 3 && tr.symlinks == 1 && tr.moved == 2 &&
              same_file(tree_y, stored_y),
          "bt_send_tree stores the tree");
    CHECK(tseen.calls > 0 && tseen.named && tseen.counts_ok && tseen.files_done == 2,
          "bt_send_tree's progress names the files and counts them");
    char got_dir[4300], got_x[4400], got_y[4400], got_link[4400], got_empty[4400];
    snprintf(got_dir, sizeof got_dir, "%s/got", root);
    snprintf(got_x, sizeof got_x, "%s/tree/sub/x.txt", got_dir);
    snprintf(got_y, sizeof got_y, "%s/tree/y.bin", got_dir);
    snprintf(got_link, sizeof got_link, "%s/tree/link", got_dir);
    snprintf(got_empty, sizeof got_empty, "%s/tree/empty", got_dir);
    const char *tree_remotes[] = {"tree"};
    struct tree_seen seen2 = {0, 0, 0, 0, 0, 1};
    st = bt_get_tree("127.0.0.1", port, tree_remotes, 1, got_dir, options, 0, on_tree, &seen2,
                     &tr);
    char target[64] = {0};
    ssize_t tlen = readlink(got_link, target, sizeof target - 1);
    struct stat est;
    CHECK(st == BT_OK && tr.moved == 2 && tr.files == 2 && same_file(tree_x, got_x) &&
              same_file(tree_y, got_y),
          "bt_get_tree brings the tree back byte-identical");
    CHECK(tlen == 5 && strcmp(target, "y.bin") == 0, "bt_get_tree makes the symlink");
    CHECK(stat(got_empty, &est) == 0 && S_ISDIR(est.st_mode) && (est.st_mode & 0777) == 0750,
          "bt_get_tree makes the empty directory with its mode");
    CHECK(seen2.named && seen2.counts_ok && seen2.files_done == 2 && seen2.files_total == 2 &&
              seen2.bytes_total == 1001 + 1500007,
          "bt_get_tree's progress names the files and ends with both counts whole");
    st = bt_get_tree("127.0.0.1", port, tree_remotes, 1, got_dir, options, 0, NULL, NULL, &tr);
    CHECK(st == BT_OK && tr.moved == 0 && tr.held == 3 && tr.bytes_moved == 0,
          "a second bt_get_tree fetches nothing");
    CHECK(bt_get_tree("127.0.0.1", port, tree_remotes, 0, got_dir, options, 0, NULL, NULL,
                      &tr) == BT_INVALID_INPUT && message_set(),
          "bt_get_tree without remotes is BT_INVALID_INPUT");
    const char *hostile[] = {"tree/../../etc"};
    CHECK(bt_get_tree("127.0.0.1", port, hostile, 1, got_dir, options, 0, NULL, NULL, &tr) ==
                  BT_REFUSED && message_has(".."),
          "bt_get_tree of a path with .. is BT_REFUSED in words");
    /* The same size and mtime, another content: sent again and counted. */
    struct stat xst;
    int rewrote = stat(tree_x, &xst) == 0 && write_file(tree_x, 1001, 0x41) == 0;
    struct timespec xtimes[2] = {xst.st_atim, xst.st_mtim};
    rewrote = rewrote && utimensat(AT_FDCWD, tree_x, xtimes, 0) == 0;
    st = bt_send_tree("127.0.0.1", port, tree_paths, 1, options, NULL, NULL, &tr);
    CHECK(rewrote && st == BT_OK && tr.changed_same_mtime == 1 && tr.moved == 1 &&
              tr.held == 1 && tr.bytes_moved == 1001,
          "bt_send_tree counts a file changed under the same size and mtime");
    st = bt_send_tree("127.0.0.1", port, tree_paths, 1, options, NULL, NULL, &tr);
    CHECK(st == BT_OK && tr.changed_same_mtime == 0 && tr.held == 2 && tr.bytes_moved == 0,
          "a re-send of the unchanged tree moves nothing");

    /* -- cancel while hashing ---------------------------------------------- */
    /* A file the server does not hold (it holds a.bin whole: its first
     * report would be the whole file). */
    char path_d[4300];
    snprintf(path_d, sizeof path_d, "%s/d.bin", src_dir);
    CHECK(write_file(path_d, 200003, 0x77) == 0, "generated d.bin");
    progress_init(&prog);
    prog.cancel_first = 1;
    st = bt_send_file("127.0.0.1", port, path_d, options, on_progress, &prog, &r);
    CHECK(st == BT_CANCELLED && prog.calls == 1 && prog.cancelled_at == 0,
          "cancelling at the first call (while hashing) gives BT_CANCELLED");

    /* -- a non-UTF-8 path --------------------------------------------------- */
    char path_c[4300];
    snprintf(path_c, sizeof path_c, "%s/caf\xe9.bin", src_dir);
    CHECK(write_file(path_c, 100003, 7) == 0, "generated a file with a non-UTF-8 name");
    uint32_t crc_c = 0;
    uint32_t crc_c_ref = crc32_reference(path_c, &ref_ok);
    CHECK(bt_crc32_file(path_c, &crc_c) == BT_OK && ref_ok && crc_c == crc_c_ref,
          "bt_crc32_file takes a non-UTF-8 path as raw bytes");
    bt_send_options *named = bt_send_options_new();
    CHECK(bt_send_options_set_remote_name(named, "cafe.bin") == BT_OK &&
              bt_send_options_set_cache_dir(named, cache_dir) == BT_OK,
          "set_remote_name, set_cache_dir");
    CHECK(bt_send_options_set_remote_name(named, "caf\xe9") == BT_UTF8,
          "a non-UTF-8 remote name is BT_UTF8");
    st = bt_send_file("127.0.0.1", port, path_c, named, NULL, NULL, &r);
    char stored_c[4300];
    snprintf(stored_c, sizeof stored_c, "%s/cafe.bin", store_dir);
    CHECK(st == BT_OK && r.crc32 == crc_c && same_file(path_c, stored_c),
          "bt_send_file sends a non-UTF-8 path under a remote name");

    /* -- error paths -------------------------------------------------------- */
    CHECK(bt_send_file(NULL, port, path_a, options, NULL, NULL, &r) == BT_NULL_POINTER &&
              message_set(),
          "bt_send_file(host NULL) is BT_NULL_POINTER with a message");
    CHECK(bt_send_file("127.0.0.1", port, NULL, options, NULL, NULL, &r) == BT_NULL_POINTER &&
              message_set(),
          "bt_send_file(path NULL) is BT_NULL_POINTER with a message");
    CHECK(bt_send_file("127.0.0.1", port, path_a, options, NULL, NULL, NULL) == BT_NULL_POINTER &&
              message_set(),
          "bt_send_file(result NULL) is BT_NULL_POINTER with a message");
    CHECK(bt_send_file("caf\xe9", port, path_a, options, NULL, NULL, &r) == BT_UTF8 && message_set(),
          "a non-UTF-8 host is BT_UTF8");
    CHECK(bt_crc32_file(NULL, &crc_c) == BT_NULL_POINTER && message_set(),
          "bt_crc32_file(path NULL) is BT_NULL_POINTER with a message");
    CHECK(bt_crc32_file(path_a, NULL) == BT_NULL_POINTER && message_set(),
          "bt_crc32_file(out NULL) is BT_NULL_POINTER with a message");
    CHECK(bt_send_options_set_retries(NULL, 1) == BT_NULL_POINTER && message_set(),
          "a setter on NULL options is BT_NULL_POINTER");
    CHECK(bt_server_config_set_dir(NULL, store_dir) == BT_NULL_POINTER && message_set(),
          "a setter on a NULL config is BT_NULL_POINTER");
    CHECK(bt_server_config_set_dir(config, NULL) == BT_NULL_POINTER && message_set(),
          "set_dir(NULL) is BT_NULL_POINTER");
    CHECK(bt_server_new(NULL, &second) == BT_NULL_POINTER && second == NULL && message_set(),
          "bt_server_new(config NULL) is BT_NULL_POINTER");
    CHECK(bt_server_new(config, NULL) == BT_NULL_POINTER && message_set(),
          "bt_server_new(out NULL) is BT_NULL_POINTER");
    CHECK(bt_server_port(NULL, &port) == BT_NULL_POINTER && message_set(),
          "bt_server_port(server NULL) is BT_NULL_POINTER");
    CHECK(bt_server_port(server, NULL) == BT_NULL_POINTER && message_set(),
          "bt_server_port(out NULL) is BT_NULL_POINTER");
    CHECK(bt_server_serve(NULL) == BT_NULL_POINTER && message_set(),
          "bt_server_serve(NULL) is BT_NULL_POINTER");
    CHECK(bt_server_stop(NULL) == BT_NULL_POINTER, "bt_server_stop(NULL) is BT_NULL_POINTER");
    bt_send_options_free(NULL);
    bt_server_config_free(NULL);
    bt_server_free(NULL);
    CHECK(1, "the free functions accept NULL");

    uint16_t nobody = closed_port();
    bt_send_options *quick = bt_send_options_new();
    CHECK(bt_send_options_set_retries(quick, 0) == BT_OK &&
              bt_send_options_set_connect_timeout_ms(quick, 2000) == BT_OK &&
              bt_send_options_set_cache_dir(quick, cache_dir) == BT_OK,
          "options for the unreachable test");
    CHECK(nobody != 0 &&
              bt_send_file("127.0.0.1", nobody, path_a, quick, NULL, NULL, &r) == BT_UNREACHABLE &&
              message_has("is unreachable") && message_has("127.0.0.1") && result_zero(&r),
          "a server nobody runs is BT_UNREACHABLE, and the message names the server");
    /* The free functions leave the message alone: a caller (like
     * examples/send.c) may free its handles before printing it. */
    bt_send_options *scratch = bt_send_options_new();
    CHECK(scratch != NULL, "bt_send_options_new for the message test");
    CHECK(bt_send_options_set_connect_timeout_ms(scratch, 0) == BT_INVALID_INPUT,
          "a zero connect timeout fails (to leave a message)");
    bt_send_options_free(scratch);
    CHECK(message_has("bt_send_options_set_connect_timeout_ms") && message_has("timeout"),
          "bt_send_options_free leaves the last error message as it was");
    char missing[4300];
    snprintf(missing, sizeof missing, "%s/does-not-exist.bin", src_dir);
    CHECK(bt_send_file("127.0.0.1", port, missing, quick, NULL, NULL, &r) == BT_SOURCE_FILE &&
              message_has("cannot open") && message_has("does-not-exist.bin") && result_zero(&r),
          "a missing file is BT_SOURCE_FILE");
    CHECK(bt_crc32_file(missing, &crc_c) == BT_SOURCE_FILE && message_set(),
          "bt_crc32_file of a missing file is BT_SOURCE_FILE");
    CHECK(bt_send_file("127.0.0.1", 0, path_a, quick, NULL, NULL, &r) == BT_INVALID_INPUT,
          "port 0 is BT_INVALID_INPUT");

    /* -- authentication: a server with a token ------------------------------ */
    /* Tokens are bytes of a given length, NULs included: these two differ
     * only after the NUL, so a library that stopped there would accept both. */
    static const char token[] = "a shared\0secret of the C test";
    static const char wrong_token[] = "a shared\0SECRET of the C test";
    const size_t token_len = sizeof token - 1;
    char store3[4200];
    snprintf(store3, sizeof store3, "%s/store3", root);
    bt_server_config *config3 = bt_server_config_new();
    CHECK(config3 != NULL, "bt_server_config_new (with a token)");
    CHECK(bt_server_config_set_token(config3, (const uint8_t *)"short", 5) == BT_INVALID_INPUT &&
              message_has("at least 16 bytes"),
          "a server token under 16 bytes is BT_INVALID_INPUT with the engine's message");
    CHECK(bt_server_config_set_token(NULL, (const uint8_t *)token, token_len) ==
                  BT_NULL_POINTER &&
              message_set(),
          "set_token on a NULL config is BT_NULL_POINTER");
    CHECK(bt_server_config_set_header_timeout_ms(config3, 0) == BT_INVALID_INPUT && message_set(),
          "a zero header timeout is BT_INVALID_INPUT");
    CHECK(bt_server_config_set_dir(config3, store3) == BT_OK &&
              bt_server_config_set_bind_address(config3, "127.0.0.1") == BT_OK &&
              bt_server_config_set_port(config3, 0) == BT_OK &&
              bt_server_config_set_log_callback(config3, on_log, NULL) == BT_OK,
          "configured the token server");
    CHECK(bt_server_config_set_token(config3, (const uint8_t *)token, token_len) == BT_OK,
          "bt_server_config_set_token");
    CHECK(bt_server_config_set_allow_legacy(config3, 1) == BT_OK, "bt_server_config_set_allow_legacy");
    CHECK(bt_server_config_set_header_timeout_ms(config3, 5000) == BT_OK,
          "bt_server_config_set_header_timeout_ms");
    CHECK(bt_server_config_set_min_free(config3, 0) == BT_OK, "bt_server_config_set_min_free 0");
    struct serving serving3;
    pthread_t thread3;
    uint16_t port3 = 0;
    bt_server *server3 = start_server(config3, &serving3, &thread3, &port3);
    CHECK(server3 != NULL && port3 != 0, "a server with a token serves");

    char path_t[4300], stored_t[4300];
    snprintf(path_t, sizeof path_t, "%s/t.bin", src_dir);
    snprintf(stored_t, sizeof stored_t, "%s/t.bin", store3);
    CHECK(write_file(path_t, 200001, 0x70CE) == 0, "generated t.bin");
    bt_send_options *authed = bt_send_options_new();
    CHECK(authed != NULL && bt_send_options_set_retries(authed, 0) == BT_OK &&
              bt_send_options_set_backoff_ms(authed, 10, 10) == BT_OK &&
              bt_send_options_set_cache_dir(authed, NULL) == BT_OK,
          "options for the token tests (no retries, no cache)");
    CHECK(bt_send_options_set_token(authed, (const uint8_t *)"0123456789abcde", 15) ==
                  BT_INVALID_INPUT &&
              message_has("the token must be at least 16 bytes long"),
          "a client token of 15 bytes is BT_INVALID_INPUT with the engine's message");
    CHECK(bt_send_options_set_token(NULL, (const uint8_t *)token, token_len) ==
              BT_NULL_POINTER,
          "set_token on NULL options is BT_NULL_POINTER");

    /* No token: refused. */
    if (server3 != NULL) {
        st = bt_send_file("127.0.0.1", port3, path_t, authed, NULL, NULL, &r);
        CHECK(st == BT_REFUSED && message_has("requires a token") && result_zero(&r),
              "a send without a token to a server with one is BT_REFUSED");
        CHECK(!exists(stored_t), "nothing stored for a client without a token");

        /* A wrong token: refused by the server, in words. */
        CHECK(bt_send_options_set_token(authed, (const uint8_t *)wrong_token,
                                        token_len) == BT_OK,
              "bt_send_options_set_token (wrong token)");
        st = bt_send_file("127.0.0.1", port3, path_t, authed, NULL, NULL, &r);
        CHECK(st == BT_REFUSED && message_has("authentication failed") && result_zero(&r),
              "a send with a wrong token is BT_REFUSED, \"authentication failed\"");
        CHECK(!exists(stored_t), "nothing stored for a client with a wrong token");

        /* Clearing the token (NULL, or length 0) is refused again. */
        CHECK(bt_send_options_set_token(authed, NULL, 0) == BT_OK, "set_token(NULL, 0) clears it");
        st = bt_send_file("127.0.0.1", port3, path_t, authed, NULL, NULL, &r);
        CHECK(st == BT_REFUSED && message_has("requires a token"),
              "after clearing the token the send is refused as without one");
        CHECK(bt_send_options_set_token(authed, (const uint8_t *)token, 0) == BT_OK,
              "set_token with length 0 clears it");

        /* The right token. */
        CHECK(bt_send_options_set_token(authed, (const uint8_t *)token, token_len) == BT_OK,
              "bt_send_options_set_token (right token)");
        st = bt_send_file("127.0.0.1", port3, path_t, authed, NULL, NULL, &r);
        CHECK(st == BT_OK, "a send with the right token succeeds");
        CHECK(r.protocol == 2, "it spoke protocol 2");
        CHECK(r.filesize == 200001 && same_file(path_t, stored_t),
              "the authenticated upload is stored byte-identical");

        /* A legacy client, admitted by allow_legacy without authenticating. */
        bt_send_options *legacy = bt_send_options_new();
        CHECK(legacy != NULL && bt_send_options_set_retries(legacy, 0) == BT_OK &&
                  bt_send_options_set_cache_dir(legacy, NULL) == BT_OK &&
                  bt_send_options_set_remote_name(legacy, "legacy.bin") == BT_OK,
              "options for the legacy send");
        CHECK(bt_send_options_set_legacy(legacy, 1) == BT_OK, "bt_send_options_set_legacy(1)");
        CHECK(bt_send_options_set_legacy(NULL, 1) == BT_NULL_POINTER,
              "set_legacy on NULL options is BT_NULL_POINTER");
        char stored_l[4300];
        snprintf(stored_l, sizeof stored_l, "%s/legacy.bin", store3);
        st = bt_send_file("127.0.0.1", port3, path_t, legacy, NULL, NULL, &r);
        CHECK(st == BT_OK && r.protocol == 1,
              "a legacy send to a server with allow_legacy succeeds with protocol 1");
        CHECK(r.bytes_sent == 200001 && same_file(path_t, stored_l),
              "the legacy upload is stored byte-identical");
        CHECK(r.encrypted == 0 && r.new_host_key == 0 && r.server_fingerprint[0] == '\0',
              "a legacy send is plaintext: encrypted == 0, no fingerprint");
        CHECK(bt_send_options_set_legacy(legacy, 0) == BT_OK, "bt_send_options_set_legacy(0)");
        CHECK(bt_send_options_set_remote_name(legacy, "auto.bin") == BT_OK, "set_remote_name");
        st = bt_send_file("127.0.0.1", port3, path_t, legacy, NULL, NULL, &r);
        CHECK(st == BT_REFUSED, "set_legacy(0) speaks protocol 2 again (refused without a token)");
        bt_send_options_free(legacy);
        CHECK(stop_server(server3, &serving3, thread3), "the token server stopped with BT_OK");
    }
    bt_send_options_free(authed);
    bt_server_config_free(config3);

    /* -- a server that keeps more free space than there is ----------------- */
    char store4[4200];
    snprintf(store4, sizeof store4, "%s/store4", root);
    bt_server_config *config4 = bt_server_config_new();
    CHECK(config4 != NULL && bt_server_config_set_dir(config4, store4) == BT_OK &&
              bt_server_config_set_bind_address(config4, "127.0.0.1") == BT_OK &&
              bt_server_config_set_port(config4, 0) == BT_OK &&
              bt_server_config_set_log_callback(config4, on_log, NULL) == BT_OK &&
              bt_server_config_set_min_free(config4, UINT64_MAX) == BT_OK,
          "bt_server_config_set_min_free(UINT64_MAX)");
    struct serving serving4;
    pthread_t thread4;
    uint16_t port4 = 0;
    bt_server *server4 = start_server(config4, &serving4, &thread4, &port4);
    CHECK(server4 != NULL, "the min_free server serves");
    if (server4 != NULL) {
        st = bt_send_file("127.0.0.1", port4, path_t, quick, NULL, NULL, &r);
        CHECK(st == BT_REFUSED && message_has("min-free"),
              "an upload that would leave less than min_free is BT_REFUSED");
        CHECK(stop_server(server4, &serving4, thread4), "the min_free server stopped with BT_OK");
    }
    bt_server_config_free(config4);

    /* -- TLS: the server's key, pinning, a mismatch, a plaintext server --- */
    char store5[4200], key5[4300], kh5[4300];
    snprintf(store5, sizeof store5, "%s/store5", root);
    snprintf(key5, sizeof key5, "%s/server.key", root);
    snprintf(kh5, sizeof kh5, "%s/known_hosts", root);
    bt_server_config *config5 = bt_server_config_new();
    CHECK(config5 != NULL && bt_server_config_set_dir(config5, store5) == BT_OK &&
              bt_server_config_set_bind_address(config5, "127.0.0.1") == BT_OK &&
              bt_server_config_set_port(config5, 0) == BT_OK &&
              bt_server_config_set_log_callback(config5, on_log, NULL) == BT_OK &&
              bt_server_config_set_key_file(config5, key5) == BT_OK &&
              bt_server_config_set_tls(config5, BT_TLS_AUTO) == BT_OK,
          "a TLS server with its key in a file of ours");
    CHECK(bt_server_config_set_tls(config5, 7) == BT_INVALID_INPUT && message_has("TLS mode"),
          "an unknown TLS mode is BT_INVALID_INPUT");
    struct serving serving5;
    pthread_t thread5;
    uint16_t port5 = 0;
    bt_server *server5 = start_server(config5, &serving5, &thread5, &port5);
    CHECK(server5 != NULL && exists(key5), "the TLS server serves and made its key file");
    if (server5 != NULL) {
        char fp[64], small[8];
        CHECK(bt_server_fingerprint(server5, fp, sizeof fp) == BT_OK &&
                  strncmp(fp, "SHA256:", 7) == 0 && strlen(fp) == 50,
              "bt_server_fingerprint writes SHA256:<43 base64>");
        CHECK(bt_server_fingerprint(server5, small, sizeof small) == BT_INVALID_INPUT,
              "bt_server_fingerprint into a short buffer is BT_INVALID_INPUT");
        bt_send_options *tls = bt_send_options_new();
        CHECK(tls != NULL && bt_send_options_set_retries(tls, 0) == BT_OK &&
                  bt_send_options_set_cache_dir(tls, NULL) == BT_OK &&
                  bt_send_options_set_known_hosts(tls, kh5) == BT_OK &&
                  bt_send_options_set_require_tls(tls, 1) == BT_OK &&
                  bt_send_options_set_remote_name(tls, "tls.bin") == BT_OK,
              "options pinning in a known-hosts file of ours, TLS required");
        CHECK(bt_send_options_set_fingerprint(tls, "MD5:nope") == BT_INVALID_INPUT,
              "a malformed fingerprint is BT_INVALID_INPUT");
        st = bt_send_file("127.0.0.1", port5, path_t, tls, NULL, NULL, &r);
        char stored5[4300];
        snprintf(stored5, sizeof stored5, "%s/tls.bin", store5);
        CHECK(st == BT_OK && r.protocol == 2 && same_file(path_t, stored5),
              "an upload over TLS is stored byte-identical");
        CHECK(r.encrypted == 1 && r.new_host_key == 1 && strcmp(r.server_fingerprint, fp) == 0,
              "the first contact reports the server's key as new, with bt_server_fingerprint's text");
        CHECK(exists(kh5), "the first contact pinned the key in the known-hosts file");
        /* Another key demanded: refused before anything is sent. */
        CHECK(bt_send_options_set_fingerprint(
                  tls, "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA") == BT_OK &&
                  bt_send_options_set_remote_name(tls, "wrong-key.bin") == BT_OK,
              "bt_send_options_set_fingerprint");
        st = bt_send_file("127.0.0.1", port5, path_t, tls, NULL, NULL, &r);
        char stored_w[4300];
        snprintf(stored_w, sizeof stored_w, "%s/wrong-key.bin", store5);
        CHECK(st == BT_HOST_KEY && message_has(fp) && !exists(stored_w) && result_zero(&r),
              "another key than the demanded one is BT_HOST_KEY, naming the real one");
        CHECK(strcmp(bt_status_name(BT_HOST_KEY), "host-key") == 0, "bt_status_name(BT_HOST_KEY)");
        CHECK(bt_send_options_set_fingerprint(tls, fp) == BT_OK, "the right fingerprint");
        st = bt_send_file("127.0.0.1", port5, path_t, tls, NULL, NULL, &r);
        CHECK(st == BT_OK, "the demanded key is the server's: stored");
        CHECK(r.encrypted == 1 && r.new_host_key == 0 && strcmp(r.server_fingerprint, fp) == 0,
              "a pinned key is not reported as new");
        CHECK(bt_send_options_set_fingerprint(tls, NULL) == BT_OK, "fingerprint cleared");
        /* Another server (another key) on its own port: a first contact. */
        st = bt_send_file("127.0.0.1", port, path_t, tls, NULL, NULL, &r);
        CHECK(st == BT_OK, "the default server speaks TLS too");
        bt_send_options_free(tls);
        CHECK(stop_server(server5, &serving5, thread5), "the TLS server stopped with BT_OK");
    }
    bt_server_config_free(config5);

    /* -- a second server, stopped by a signal handler ---------------------- */
    char store2[4300];
    snprintf(store2, sizeof store2, "%s/store2", root);
    bt_server_config *config2 = bt_server_config_new();
    bt_server *server2 = NULL;
    CHECK(bt_server_config_set_dir(config2, store2) == BT_OK &&
              bt_server_config_set_bind_address(config2, "127.0.0.1") == BT_OK &&
              bt_server_config_set_port(config2, 0) == BT_OK &&
              bt_server_config_set_log_callback(config2, on_log, NULL) == BT_OK &&
              bt_server_new(config2, &server2) == BT_OK && server2 != NULL,
          "a second server on another directory");
    if (server2 != NULL) {
        signal_server = server2;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigusr1;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);
        struct serving serving2 = {server2, BT_PANIC};
        pthread_t thread2;
        if (pthread_create(&thread2, NULL, serve_main, &serving2) == 0) {
            nanosleep(&pause, NULL); /* most likely inside poll(2) by now */
            CHECK(pthread_kill(thread2, SIGUSR1) == 0, "SIGUSR1 sent to the serving thread");
            struct timespec deadline;
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_sec += 30;
            int joined = pthread_timedjoin_np(thread2, NULL, &deadline);
            CHECK(joined == 0 && serving2.status == BT_OK,
                  "bt_server_stop from a signal handler ends bt_server_serve with BT_OK");
            if (joined != 0) {
                printf("%d passed, %d failed\n", passed, failed);
                _exit(1); /* the thread still uses the server: do not free it */
            }
        }
        /* A stopped server's wake-up pipe fills up; stop must keep errno. */
        errno = EDOM;
        for (int i = 0; i < 70000; i++) {
            bt_server_stop(server2);
        }
        CHECK(errno == EDOM, "bt_server_stop leaves errno unchanged");
        signal(SIGUSR1, SIG_DFL);
        signal_server = NULL;
        bt_server_free(server2);
    }
    bt_server_config_free(config2);

    /* -- stop ------------------------------------------------------------- */
    CHECK(bt_server_stop(server) == BT_OK, "bt_server_stop from the main thread");
    if (started) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 30;
        int joined = pthread_timedjoin_np(thread, NULL, &deadline);
        CHECK(joined == 0, "the server thread ended within 30 s of bt_server_stop");
        if (joined != 0) {
            printf("%d passed, %d failed\n", passed, failed);
            _exit(1); /* the thread still uses the server: do not free it */
        }
        CHECK(serving.status == BT_OK, "bt_server_serve returned BT_OK");
    }
    CHECK(__atomic_load_n(&log_lines, __ATOMIC_SEQ_CST) > 0, "the log callback received lines");
    CHECK(bt_server_stop(server) == BT_OK, "bt_server_stop again is harmless");
    CHECK(bt_server_serve(server) == BT_OK, "bt_server_serve on a stopped server returns at once");

    bt_server_free(server);
    bt_server_config_free(config);
    bt_send_options_free(options);
    bt_send_options_free(slow);
    bt_send_options_free(named);
    bt_send_options_free(quick);

    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    CHECK(!exists(root), "temporary directory removed");

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
