"""`tally`: a small stateful service for the emulated fleet, the one the state handoff is shown with.

It counts: `POST /add` adds one and answers the new count, `GET /value` answers it. It speaks the
runtime's handoff protocol (api/kinds/services.py, StateHandoff): it serves on the sockets it is
handed (LISTEN_FDS, fds 3..), or on $PORT; on `$DPUFLEET_HANDOFF_DIR/control.sock` it answers
`POST /drain` (it stops accepting; being single-threaded, what it had is answered), `GET /state` (the
count) and `POST /resume`; it starts from the count in `$DPUFLEET_STATE_FILE` when there is one.

A static C program (no interpreter in a busybox image), compiled from the source below by the C
compiler of the machine that builds the image (`cc -static`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = r"""
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static long count;
static int draining;

static void bye(int sig) { (void)sig; _exit(0); }

static int request(int fd, char *buf, size_t size) {
    size_t got = 0;
    while (got < size - 1) {
        ssize_t n = read(fd, buf + got, size - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        buf[got] = 0;
        if (strstr(buf, "\r\n\r\n")) break;
    }
    buf[got] = 0;
    return (int)got;
}

static void answer(int fd, int code, const char *body) {
    char out[256];
    int n = snprintf(out, sizeof out, "HTTP/1.0 %d %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     code, code == 200 ? "OK" : "Not Found", strlen(body), body);
    ssize_t off = 0;
    while (off < n) { ssize_t w = write(fd, out + off, (size_t)(n - off)); if (w <= 0) break; off += w; }
}

static void serve(int fd) {
    char buf[4096], body[64];
    request(fd, buf, sizeof buf);
    if (strncmp(buf, "POST /add ", 10) == 0) { count++; snprintf(body, sizeof body, "%ld\n", count); answer(fd, 200, body); }
    else if (strncmp(buf, "GET /value ", 11) == 0) { snprintf(body, sizeof body, "%ld\n", count); answer(fd, 200, body); }
    else answer(fd, 404, "no such path\n");
    close(fd);
}

static void control(int fd) {
    char buf[4096], body[64];
    request(fd, buf, sizeof buf);
    if (strncmp(buf, "POST /drain ", 12) == 0) { draining = 1; answer(fd, 200, "drained\n"); fprintf(stderr, "tally: drained at %ld\n", count); }
    else if (strncmp(buf, "GET /state ", 11) == 0) { snprintf(body, sizeof body, "%ld", count); answer(fd, 200, body); }
    else if (strncmp(buf, "POST /resume ", 13) == 0) { draining = 0; answer(fd, 200, "resumed\n"); fprintf(stderr, "tally: resumed\n"); }
    else answer(fd, 404, "no such path\n");
    close(fd);
}

int main(void) {
    signal(SIGTERM, bye);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stderr, NULL, _IOLBF, 0);
    int listener = -1, ctl = -1;
    const char *fds = getenv("LISTEN_FDS");
    if (fds && atoi(fds) >= 1) listener = 3;
    else {
        const char *port = getenv("PORT");
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET; sa.sin_port = htons((unsigned short)atoi(port ? port : "8080"));
        listener = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1; setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(listener, (struct sockaddr *)&sa, sizeof sa) || listen(listener, 128)) { perror("tally: listen"); return 1; }
    }
    const char *state = getenv("DPUFLEET_STATE_FILE");
    FILE *f = state ? fopen(state, "r") : NULL;
    if (f) { if (fscanf(f, "%ld", &count) != 1) count = 0; fclose(f); fprintf(stderr, "tally: imported %ld\n", count); }
    const char *dir = getenv("DPUFLEET_HANDOFF_DIR");
    if (dir) {
        struct sockaddr_un su = {0};
        su.sun_family = AF_UNIX;
        snprintf(su.sun_path, sizeof su.sun_path, "%s/control.sock", dir);
        unlink(su.sun_path);
        ctl = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(ctl, (struct sockaddr *)&su, sizeof su) || listen(ctl, 16)) { perror("tally: control socket"); return 1; }
    }
    fprintf(stderr, "tally: serving from %ld\n", count);
    for (;;) {
        struct pollfd p[2];
        int n = 0, li = -1, ci = -1;
        if (!draining) { p[n].fd = listener; p[n].events = POLLIN; li = n++; }
        if (ctl >= 0) { p[n].fd = ctl; p[n].events = POLLIN; ci = n++; }
        if (n == 0) { pause(); continue; }
        if (poll(p, (nfds_t)n, -1) < 0) { if (errno == EINTR) continue; perror("tally: poll"); return 1; }
        if (ci >= 0 && (p[ci].revents & POLLIN)) { int c = accept(ctl, NULL, NULL); if (c >= 0) control(c); continue; }
        if (li >= 0 && (p[li].revents & POLLIN)) { int c = accept(listener, NULL, NULL); if (c >= 0) serve(c); }
    }
}
"""


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def build_tally(where: Path) -> Path:
    """The static `tally` binary, compiled in `where`."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build the tally service with")
    source = where / "tally.c"
    source.write_text(SOURCE)
    binary = where / "tally"
    done = subprocess.run(
        [cc, "-static", "-O2", "-Wall", "-o", str(binary), str(source)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"compiling tally failed: {done.stderr.strip()[:1000]}")
    return binary
