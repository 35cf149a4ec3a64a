"""An LD_PRELOAD shim that sets TCP_NODELAY on every accepted socket of a process.

Why: sglang-router 0.3.2 leaves Nagle's algorithm on for the connections it accepts (strace:
its outbound sockets to the workers get TCP_NODELAY, accepted ones get none), so on a
keep-alive connection each streamed reply's chunks after the head wait for the client's delayed
ACK, about 40 ms on Linux. That is the router's real behaviour and the default rows keep it;
router_peer's opt-in ``+nodelay`` rows run it with this shim, to show what it costs when that
wait is taken out. Needs a C compiler (``cc``); the library is built once per process.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* tokio (mio) accepts with accept4; setsockopt fails harmlessly on a non-TCP socket. */
int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int conn = real(fd, addr, len, flags);
    if (conn >= 0) {
        int one = 1;
        setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return conn;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) { return accept4(fd, addr, len, 0); }
"""


@functools.cache
def shim_path() -> Path:
    """The compiled shim (in a temporary directory removed at exit)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("the +nodelay rows need a C compiler (cc) to build their shim")
    out = Path(tempfile.mkdtemp(prefix="nodelay_shim_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    (out / "shim.c").write_text(SOURCE)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out / "shim.so"),
                    str(out / "shim.c"), "-ldl"], check=True, capture_output=True)
    return out / "shim.so"
