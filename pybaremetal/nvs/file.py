"""The file / block device backend: opens the path, hands the fd to native/nvs_file.c.

O_DIRECT is asked for first (the page cache is bypassed, as a real drive would be); a
filesystem that refuses it (EINVAL: ramfs, some FUSE or overlay filesystems; tmpfs before
Linux 6.6) gets buffered I/O and one NvsWarning, and ``durable`` then means an fdatasync
after each write.  With O_DIRECT, ``durable`` adds O_DSYNC: each pwrite returns once its data
is on the medium.  Block devices get their size from BLKGETSIZE64 (in C).
"""
import errno
import os
import stat
import warnings

from .. import abi
from .._native import ffi, lib
from ..errors import ArgumentError, raise_recorded
from ..memory import parse_size
from . import NvsError, NvsWarning


def _create(path, size_spec):
    """Make the image file, or grow it (never shrink) to the asked size rounded up to 4096."""
    size = parse_size(size_spec, f"drive {path}: create")
    size = -(-size // abi.SECTOR_SIZE) * abi.SECTOR_SIZE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise NvsError(f"drive {path}: cannot create it: {error.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            current = -(-st.st_size // abi.SECTOR_SIZE) * abi.SECTOR_SIZE
            if st.st_size < max(size, current):
                os.ftruncate(fd, max(size, current))
    finally:
        os.close(fd)


def _open(path, drive):
    """(fd, refused): O_DIRECT (+ O_DSYNC when durable) if the filesystem allows it; refused
    is True when it did not (buffered I/O instead)."""
    flags = (os.O_RDONLY if drive.read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        if drive.direct:
            try:
                return os.open(path, flags | os.O_DIRECT | (os.O_DSYNC if drive.durable else 0)), False
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                return os.open(path, flags), True
        return os.open(path, flags), False
    except OSError as error:
        raise NvsError(f"drive {path}: cannot open it: {error.strerror}") from None


def open_drive(machine, drive, number):
    """Open ``drive`` (a pybaremetal.nvs.Drive) as drive ``number`` of ``machine``."""
    path = os.fspath(drive.path)
    if drive.create is not None:
        _create(path, drive.create)
    fd, refused = _open(path, drive)
    flags = (lib.BM_DRIVE_READ_ONLY if drive.read_only else 0) | (lib.BM_DRIVE_DURABLE if drive.durable else 0)
    got = lib.bm_nvs_attach_file(machine._c, fd, flags, path.encode())
    if got < 0:
        os.close(fd)
        raise_recorded(NvsError)
    assert got == number, (got, number)
    if refused:
        warnings.warn(f"drive {path}: the filesystem refuses O_DIRECT; using buffered I/O"
                      f"{' with fdatasync after each write' if drive.durable else ''}",
                      NvsWarning, stacklevel=4)
    attached = FileDrive(machine, number, path, drive)
    if drive.queue_depth is not None:
        attached.queue_depth = drive.queue_depth
    if drive.poll_us is not None and not refused:      # buffered: nothing to poll (warned)
        attached.poll_us = drive.poll_us
    return attached


class FileDrive:
    """An attached drive, as ``machine.drives[n]`` shows it: ``number``, ``path``, ``sectors``,
    ``read_only``, ``durable``, ``direct`` (O_DIRECT in use), ``queue_depth``, ``poll_us``
    (how long a core polls for completion before sleeping; both settable), and the I/O
    counters ``reads``, ``writes`` (calls), ``sectors_read``, ``sectors_written``, ``errors``,
    ``bounced`` (chunks copied through a core's aligned buffer), ``polled`` (completions a core
    took by polling rather than sleeping).  After the machine halts the
    last values read stay readable."""

    kind = "file"

    def __init__(self, machine, number, path, spec):
        self._machine = machine
        self.number = number
        self.path = path
        self.spec = spec
        self._info = ffi.new("struct bm_drive_info *")
        self._attached = True
        self._refresh()

    def _refresh(self):
        if self._attached and lib.bm_nvs_info(self._machine._c, self.number, self._info) != 0:
            self._attached = False
        return self._info

    def _detach(self):
        self._refresh()
        self._attached = False

    def flush(self):
        """Put every completed write on the medium (fdatasync).  Raises NvsError on failure."""
        if not self._attached:
            raise NvsError(f"drive {self.number} ({self.path}): the machine has halted")
        if lib.bm_nvs_flush(self._machine._c, self.number) == 0:
            raise_recorded(NvsError)

    @property
    def queue_depth(self):
        return self._refresh().queue_depth

    @queue_depth.setter
    def queue_depth(self, depth):
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ArgumentError(f"queue_depth must be an int 1..32, got {depth!r}")
        if lib.bm_nvs_set_queue_depth(self._machine._c, self.number, depth) != 0:
            raise_recorded(NvsError)

    @property
    def poll_us(self):
        return self._refresh().poll_us

    @poll_us.setter
    def poll_us(self, microseconds):
        if isinstance(microseconds, bool) or not isinstance(microseconds, int) \
                or not 0 <= microseconds <= lib.BM_NVS_POLL_MAX_US:
            raise ArgumentError(f"poll_us must be an int 0..{lib.BM_NVS_POLL_MAX_US} (microseconds), "
                                f"got {microseconds!r}")
        if lib.bm_nvs_set_poll(self._machine._c, self.number, microseconds) != 0:
            raise_recorded(NvsError)

    def stats(self):
        """The counters as a dict."""
        info = self._refresh()
        return {name: getattr(info, name) for name in
                ("reads", "writes", "sectors_read", "sectors_written", "errors", "bounced", "polled")}

    def __repr__(self):
        info = self._refresh()
        mode = ["ro" if info.read_only else "rw"] + (["durable"] if info.durable else []) \
            + (["direct"] if info.direct else ["buffered"])
        return f"<drive {self.number}: {self.path} {info.sectors} sectors {','.join(mode)}>"


def _counter(name):
    return property(lambda self: getattr(self._refresh(), name))


for _name in ("sectors", "read_only", "durable", "direct", "reads", "writes", "sectors_read",
              "sectors_written", "errors", "bounced", "polled"):
    setattr(FileDrive, _name, _counter(_name))
for _name in ("read_only", "durable", "direct"):
    setattr(FileDrive, _name, property(lambda self, _n=_name: bool(getattr(self._refresh(), _n))))
