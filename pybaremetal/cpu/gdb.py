"""Debugging flat binaries: ``--gdb PORT`` (Machine(gdb=PORT)) and ``--dumpcore DIR``.

The gdb stub itself is C (native/gdbstub.c, behind every CPU backend's table); this module
only waits for gdb to connect (on 127.0.0.1, before the app's first instruction: Ctrl-C works
while waiting) and hands the socket over, and checks the core directory.
"""
import os
import socket
import sys

from .._native import ffi, lib
from ..errors import ArgumentError, raise_recorded


def check_port(port):
    """``port`` as an int in 0..65535 (0: any free port, printed when listening)."""
    try:
        value = int(port)
    except (TypeError, ValueError):
        value = -1
    if isinstance(port, bool) or not 0 <= value <= 65535:
        raise ArgumentError(f"gdb: {port!r} is not a TCP port (0..65535; 0 picks a free one)")
    return value


def check_core_dir(path):
    """``path`` if core files can be written there, else ArgumentError."""
    if not os.path.isdir(path):
        raise ArgumentError(f"dumpcore: {path} is not a directory; create it first")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ArgumentError(f"dumpcore: {path} cannot be written (permission denied)")
    return path


def wait_for_gdb(port, stream=sys.stderr):
    """Listen on 127.0.0.1:``port``, say so on ``stream``, accept gdb's connection; returns
    a stub (native struct bm_gdb *) owning the connected socket, for bm_guest_run_debug."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError as error:
            raise ArgumentError(f"--gdb {port}: cannot listen there ({error.strerror}); "
                                "give another port") from None
        listener.listen(1)
        bound = listener.getsockname()[1]
        print(f"baremetal: gdb: waiting on 127.0.0.1:{bound} (gdb -ex 'target remote :{bound}')",
              file=stream, flush=True)
        connection, _ = listener.accept()
    finally:
        listener.close()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stub = lib.bm_gdb_open(connection.detach())
    if stub == ffi.NULL:
        raise_recorded()
    return stub
