"""BMFS, the BareMetal File System: the on-disk format, a library, and `baremetal bmfs`.

The format (baremetal-api.md section 5): the disk is cut in 2 MiB blocks; the ASCII tag
"BMFS" sits at byte 1024 (the rest of that 512-byte area zero); the directory is bytes
4096..8191, 64 records of 64 bytes: name (32 bytes, NUL-terminated, at most 31 characters),
starting block, reserved blocks, file size in bytes, unused (four little-endian u64).  A
record whose name starts with 0x00 ends the directory, 0x01 marks a deleted record.  Block 0
holds the above (and a boot sector at byte 0 on bootable disks); files are contiguous runs of
blocks from block 1 on.  Upstream's `bmfs` tool reserves in MiB rounded up to an even number;
so does ``create`` here, and disks written by either tool read the same with the other.

Differences from upstream's tool, on purpose: every error is refused before anything is
written and ends with a non-zero exit (1; 2 for a usage mistake: a bad size, a disk path that is
a directory or cannot be a disk, a wrong command or argument count); names longer than 31 bytes
are refused (upstream corrupts the record); ``write`` of a file without an entry creates one
sized to fit; a file may use the disk's last block (upstream never allocates it).

Upstream's safety is kept: ``format`` of a disk that holds a BMFS says "Format aborted!" unless
given ``/force`` (or ``--force``); ``initialize`` over an existing non-empty file is refused
without ``--force`` (and a failed initialize leaves the old file as it was: the new image is
made beside it and renamed over it); ``create NAME`` without a size asks for it on a terminal.

Damaged records, such as upstream's tool leaves them (a name of 32 characters or more, which
overwrites the record's block numbers; two files whose blocks overlap after a delete and a
create on a full disk; blocks outside the disk; a size larger than the reservation; a repeated
name), do not make the disk unreadable: each is listed with a warning (``Entry.problem``,
``Disk.warnings()``), the others work as usual, a damaged record can be deleted, and a file
whose record is damaged is never written (reading it is allowed when its blocks lie inside the
disk).  New files are placed clear of every block any record claims.

A :class:`Disk` works over an image file or block device (``Disk.open(path)``) or over a drive
of the running machine (``Disk.on_drive(0)``, through b_nvs_read/b_nvs_write); every access
is whole 4096-byte sectors, so both behave the same.
"""
import math
import os
import stat
import struct
import tempfile
import sys
from dataclasses import dataclass

from . import abi
from .errors import ArgumentError, BareMetalError
from .memory import parse_size

BLOCK_SIZE = 2 << 20
MIN_DISK_SIZE = 6 << 20
TAG_OFFSET = 1024
TAG = b"BMFS"
DIRECTORY_OFFSET = 4096
ENTRIES = 64
RECORD = struct.Struct("<32sQQQQ")          # name, starting block, reserved blocks, size, unused
NAME_MAX = 31
SECTOR = abi.SECTOR_SIZE
CHUNK = 8 << 20                             # bytes per transfer when copying files
PROGRESS_MIN = 64 << 20                     # the CLI shows a progress bar above this


class BmfsError(BareMetalError):
    """A BMFS operation was refused (not a BMFS disk, bad name, no space, ...); nothing was
    written."""
    exit_status = 1


class BmfsUsageError(BmfsError):
    """A mistake in how the tool was called (a bad size, a disk path that cannot be a disk, a
    wrong command or argument count)."""
    exit_status = 2


@dataclass(frozen=True)
class Entry:
    """A directory record: ``name``, ``start`` and ``reserved`` (2 MiB blocks), ``size``
    (bytes), ``index`` (0..63, the record's place in the directory)."""
    name: str
    start: int
    reserved: int
    size: int
    index: int
    problem: str = None                 # why the record is damaged (None: it is sound)

    @property
    def reserved_mib(self):
        return self.reserved * (BLOCK_SIZE >> 20)


# --- devices: whole sectors in, whole sectors out ------------------------------------------------

class ImageDevice:
    """An image file or block device, by path."""

    def __init__(self, path, writable=True):
        self.path = os.fspath(path)
        self.writable = writable
        check_disk_path(self.path)
        try:
            self.fd = os.open(self.path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as error:
            raise BmfsError(f"{self.path}: cannot open it: {error.strerror}") from None
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as error:
            os.close(self.fd)
            raise BmfsUsageError(f"{self.path}: cannot be a disk (its size cannot be read: "
                                 f"{error.strerror})") from None

    def _failed(self, doing, offset, error):
        return BmfsError(f"{self.path}: {doing} at byte {offset} failed: {error.strerror}")

    def read(self, offset, length):
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as error:
            raise self._failed("reading", offset, error) from None
        if len(data) < length:
            raise BmfsError(f"{self.path}: the disk ends at byte {offset + len(data)}")
        return data

    def read_into(self, offset, view):
        try:
            done = os.preadv(self.fd, [view], offset)
        except OSError as error:
            raise self._failed("reading", offset, error) from None
        if done < len(view):
            raise BmfsError(f"{self.path}: the disk ends at byte {offset + done}")

    def write(self, offset, data):
        view = memoryview(data).cast("B")
        while view:
            try:
                done = os.pwrite(self.fd, view, offset)
            except OSError as error:
                raise self._failed("writing", offset, error) from None
            view, offset = view[done:], offset + done

    def close(self):
        if self.fd >= 0:
            if self.writable:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1


class DriveDevice:
    """A drive of the calling thread's machine, through b_nvs_read / b_nvs_write."""

    def __init__(self, drive=0):
        from .machine import current_machine
        self.machine = current_machine()
        if not 0 <= drive < len(self.machine.drives):
            raise BmfsError(f"no drive {drive} (the machine has {len(self.machine.drives)})")
        self.drive = drive
        self.path = f"drive {drive} ({self.machine.drives[drive].path})"
        self.size = self.machine.drives[drive].sectors * SECTOR

    def read(self, offset, length):
        buf = bytearray(length)
        self.read_into(offset, buf)
        return bytes(buf)

    def read_into(self, offset, view):
        from .nvs import b_nvs_read
        b_nvs_read(view, offset // SECTOR, len(view) // SECTOR, self.drive)

    def write(self, offset, data):
        from .nvs import b_nvs_write
        b_nvs_write(data, offset // SECTOR, len(data) // SECTOR, self.drive)

    def close(self):
        pass


def check_disk_path(path):
    """BmfsUsageError unless ``path`` is a regular file or a block device (or absent: open
    then says so)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode):
        raise BmfsUsageError(f"{path}: is a directory, not a disk image (give an image file or a block device)")
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise BmfsUsageError(f"{path}: is not a regular file or a block device, so it cannot be a disk")


# --- the file system --------------------------------------------------------------------------

def _name_bytes(name, lookup=False):
    """The on-disk name for ``name`` (str or bytes), or BmfsError.  ``lookup``: a name to find,
    which may be longer than a new file's (damaged records made by upstream's tool)."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if not raw:
        raise BmfsError("the file name is empty")
    if len(raw) > NAME_MAX and not lookup:
        raise BmfsError(f"the file name {name!r} is {len(raw)} bytes long; BMFS names hold at most {NAME_MAX}")
    if b"\0" in raw or raw[0] == 1 or b"/" in raw:
        raise BmfsError(f"the file name {name!r} holds a NUL, a leading 0x01 or a '/'")
    return raw


def _printable(raw):
    """A record's stored name (up to its NUL) as text."""
    return (raw[:raw.index(b"\0")] if b"\0" in raw else raw).decode(errors="replace")


def _pad(data, multiple):
    """data followed by zeros up to a multiple of ``multiple``."""
    return bytes(data) + bytes(-len(data) % multiple)


class Disk:
    """A BMFS disk over a device (see the module docstring).  Use as a context manager."""

    def __init__(self, device, check=True):
        self.device = device
        self.size = device.size
        self.blocks = self.size // BLOCK_SIZE
        if check:
            self._check()

    @classmethod
    def open(cls, path, writable=True, check=True):
        """The BMFS disk in the image file or block device at ``path``."""
        device = ImageDevice(path, writable)
        try:
            return cls(device, check)
        except BaseException:
            device.close()
            raise

    @classmethod
    def on_drive(cls, drive=0, check=True):
        """The BMFS disk on drive ``drive`` of the calling thread's machine."""
        return cls(DriveDevice(drive), check)

    def close(self):
        self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # --- reading the disk ---------------------------------------------------------------

    def _check_size(self):
        if self.size < MIN_DISK_SIZE:
            raise BmfsError(f"{self.device.path}: the disk holds {self.size} bytes; BMFS needs at "
                            f"least {MIN_DISK_SIZE >> 20} MiB")

    def _check(self):
        self._check_size()
        tag = self.device.read(0, SECTOR)[TAG_OFFSET:TAG_OFFSET + 5]
        if tag[:4].upper() != TAG or tag[4] != 0:
            raise BmfsError(f"{self.device.path}: not a BMFS disk (no 'BMFS' tag at byte {TAG_OFFSET}; "
                            f"`format` makes one)")

    def _directory(self):
        return bytearray(self.device.read(DIRECTORY_OFFSET, SECTOR))

    def _inside(self, start, reserved):
        return start >= 1 and reserved <= self.blocks and start + reserved <= self.blocks

    def _parse(self, directory):
        """(records, free record indexes, index of the end record or None).  Every record in
        use is in ``records``; a damaged one has its ``problem`` set."""
        raws, free, end = [], [], None
        for index in range(ENTRIES):
            raw, start, reserved, size, _ = RECORD.unpack_from(directory, index * RECORD.size)
            if raw[0] == 0:
                end = index
                break
            if raw[0] == 1:
                free.append(index)
                continue
            raws.append((index, raw, start, reserved, size))
        problems, names = {}, {}
        for index, raw, start, reserved, size in raws:
            name = raw[:raw.index(b"\0")] if b"\0" in raw else raw
            if b"\0" not in raw:
                problems[index] = ("its name fills all 32 bytes without an end (a longer name, as "
                                   "upstream's tool writes it, overwrote the block numbers)")
            elif not self._inside(start, reserved):
                problems[index] = (f"blocks {start}..{start + reserved - 1} are outside the disk's "
                                   f"data blocks 1..{self.blocks - 1}")
            elif size > reserved * BLOCK_SIZE:
                problems[index] = f"size {size} is larger than its {reserved} reserved blocks"
            elif name in names:
                problems[index] = f"its name is also record {names[name]}'s"
            names.setdefault(name, index)
        placed = sorted((r for r in raws if self._inside(r[2], r[3])), key=lambda r: r[2])
        for i, (index, raw, start, reserved, _) in enumerate(placed):
            for other in placed[i + 1:]:
                if other[2] >= start + reserved:
                    break
                for this, that in ((index, other), (other[0], (index, raw))):
                    problems.setdefault(this, f"its blocks overlap those of record {that[0]} "
                                              f"({_printable(that[1])!r})")
        records = [Entry(_printable(raw), start, reserved, size, index, problems.get(index))
                   for index, raw, start, reserved, size in raws]
        return records, free, end

    def _corrupt(self, entry, why):
        return BmfsError(f"{self.device.path}: corrupt directory: record {entry.index} "
                         f"({entry.name!r}): {entry.problem}; {why}")

    def entries(self):
        """The files, in directory order; a damaged record has its ``problem`` set."""
        return self._parse(self._directory())[0]

    def warnings(self):
        """One line per damaged record."""
        return [f"{self.device.path}: warning: record {e.index} ({e.name!r}): {e.problem}"
                for e in self.entries() if e.problem]

    def query(self, name):
        """The Entry of ``name`` (a damaged record's too: a name of 32 bytes or more finds the
        record whose 32 name bytes it starts with).  Raises BmfsError if there is none."""
        raw = _name_bytes(name, lookup=True)
        for entry in self.entries():
            stored = entry.name.encode(errors="replace")
            if stored == raw or (len(stored) == 32 and raw[:32] == stored):
                return entry
        raise BmfsError(f"{self.device.path}: no file {name!r}")

    def exists(self, name):
        try:
            self.query(name)
            return True
        except BmfsError:
            return False

    # --- changing the disk -----------------------------------------------------------------

    def format(self):
        """Write an empty BMFS (tag and empty directory); the boot sector area is kept."""
        self._check_size()
        first = bytearray(self.device.read(0, SECTOR))
        first[TAG_OFFSET:TAG_OFFSET + 512] = TAG + bytes(512 - len(TAG))
        self.device.write(0, first)
        self.device.write(DIRECTORY_OFFSET, bytes(SECTOR))

    def _claimed(self, records):
        """Records whose blocks lie inside the disk (damaged ones too: never allocated over)."""
        return [e for e in records if self._inside(e.start, e.reserved)]

    def _free_run(self, records, blocks):
        """The first block of the first run of ``blocks`` blocks no record claims, or None."""
        position = 1
        for entry in sorted(self._claimed(records), key=lambda e: e.start):
            if entry.start - position >= blocks:
                return position
            position = max(position, entry.start + entry.reserved)
        return position if self.blocks - position >= blocks else None

    def create(self, name, mib):
        """Reserve ``mib`` MiB (rounded up to an even number: whole 2 MiB blocks) for a new file
        ``name``.  Returns its Entry.  Raises BmfsError for a bad or duplicate name, a full
        directory, or no run of free blocks that large."""
        raw = _name_bytes(name)
        if isinstance(mib, bool) or not isinstance(mib, int) or mib < 1:
            raise BmfsError(f"the reservation must be a whole number of MiB >= 1, got {mib!r}")
        blocks = -(-mib // (BLOCK_SIZE >> 20))
        directory = self._directory()
        live, free, end = self._parse(directory)
        if any(e.name.encode(errors="replace") == raw for e in live):     # damaged ones too
            raise BmfsError(f"{self.device.path}: a file {name!r} already exists")
        index = free[0] if free else end
        if index is None:
            raise BmfsError(f"{self.device.path}: no free directory record ({ENTRIES} in use)")
        start = self._free_run(live, blocks)
        if start is None:
            raise BmfsError(f"{self.device.path}: no {blocks * 2} MiB run of free space for {name!r}")
        RECORD.pack_into(directory, index * RECORD.size, raw, start, blocks, 0, 0)
        if index == end and index + 1 < ENTRIES:
            directory[(index + 1) * RECORD.size] = 0           # the directory now ends after it
        self.device.write(DIRECTORY_OFFSET, directory)
        return Entry(raw.decode(errors="replace"), start, blocks, 0, index)

    def delete(self, name):
        """Mark ``name``'s record deleted (its blocks become free); damaged records too."""
        entry = self.query(name)
        directory = self._directory()
        directory[entry.index * RECORD.size] = 1
        self.device.write(DIRECTORY_OFFSET, directory)

    def _set_size(self, entry, size):
        directory = self._directory()
        struct.pack_into("<Q", directory, entry.index * RECORD.size + 48, size)
        self.device.write(DIRECTORY_OFFSET, directory)

    def write(self, name, source, progress=None):
        """Write a file: ``source`` is bytes / any buffer, or a host file path (str or
        os.PathLike).  A file without an entry gets one sized to fit.  ``progress(done, total)``
        is called after each chunk.  Returns the Entry.  Raises BmfsError when the data is
        larger than the file's reservation (nothing is written)."""
        _name_bytes(name)
        with _Source(source) as data:
            size = data.size
            entry = self.query(name) if self.exists(name) else None
            if entry is None:
                entry = self.create(name, max(1, math.ceil(size / (1 << 20))))
            if entry.problem:
                raise self._corrupt(entry, "nothing was written")
            if size > entry.reserved * BLOCK_SIZE:
                raise BmfsError(f"{self.device.path}: {size} bytes do not fit in the "
                                f"{entry.reserved_mib} MiB reserved for {name!r}")
            base, done = entry.start * BLOCK_SIZE, 0
            end = -(-size // BLOCK_SIZE) * BLOCK_SIZE              # zeros to the end of the last block
            while done < end:
                chunk = data.read(done, min(CHUNK, end - done))
                self.device.write(base + done, _pad(chunk, min(CHUNK, end - done)))
                done += min(CHUNK, end - done)
                if progress:
                    progress(min(done, size), size)
        self._set_size(entry, size)
        return Entry(entry.name, entry.start, entry.reserved, size, entry.index)

    def read(self, name, destination=None, progress=None):
        """Read a file.  ``destination``: None (returns bytes), a host file path (written;
        returns the Entry), or a writable buffer of at least the file's size (filled; returns
        the Entry)."""
        entry = self.query(name)
        if entry.problem and not (self._inside(entry.start, entry.reserved)
                                  and entry.size <= entry.reserved * BLOCK_SIZE):
            raise self._corrupt(entry, "it cannot be read")
        base, size = entry.start * BLOCK_SIZE, entry.size
        if destination is None:
            buf = bytearray(-(-size // SECTOR) * SECTOR)
            self._read_chunks(base, memoryview(buf), size, progress)
            return bytes(buf[:size])
        if isinstance(destination, (str, os.PathLike)):
            with open(destination, "wb") as out:
                buf = bytearray(CHUNK)
                for done in range(0, size, CHUNK):
                    n = min(CHUNK, size - done)
                    view = memoryview(buf)[:-(-n // SECTOR) * SECTOR]
                    self.device.read_into(base + done, view)
                    out.write(view[:n])
                    if progress:
                        progress(done + n, size)
            return entry
        view = memoryview(destination).cast("B")
        if len(view) < size:
            raise BmfsError(f"the buffer holds {len(view)} bytes; {name!r} holds {size}")
        whole = size - size % SECTOR
        self._read_chunks(base, view[:whole], whole, progress)
        if whole < size:
            view[whole:size] = self.device.read(base + whole, SECTOR)[:size - whole]
        return entry

    def _read_chunks(self, base, view, size, progress):
        for done in range(0, len(view), CHUNK):
            self.device.read_into(base + done, view[done:done + CHUNK])
            if progress:
                progress(min(done + CHUNK, size), size)

    def free_blocks(self):
        """Data blocks no record claims."""
        used = set()
        for e in self._claimed(self.entries()):
            used.update(range(e.start, e.start + e.reserved))
        return self.blocks - 1 - len(used)


class _Source:
    """Bytes to write, from a buffer or a host file, read in chunks."""

    def __init__(self, source):
        self.file = None
        if isinstance(source, (str, os.PathLike)):
            try:
                self.file = open(source, "rb")
            except OSError as error:
                raise BmfsError(f"{os.fspath(source)}: cannot read it: {error.strerror}") from None
            self.size = os.fstat(self.file.fileno()).st_size
        else:
            self.view = memoryview(source).cast("B")
            self.size = len(self.view)

    def read(self, offset, length):
        if self.file is None:
            return self.view[offset:offset + length]
        return os.pread(self.file.fileno(), length, offset)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()


def initialize(path, size, force=False, progress=None):
    """Make a new BMFS image file of ``size`` (an int or "64M", "1G"; at least 6 MiB) at
    ``path`` and format it.  Returns the open Disk.  An existing non-empty file is replaced only
    with ``force``; the new image is made beside it and renamed over it, so on any error the old
    file is left as it was and no new file appears.  ``progress(done, total)`` is called as the
    image is filled (with zeros, sparsely: at once).  Raises BmfsUsageError for a bad size or
    path, BmfsError when the file exists or cannot be made."""
    try:
        nbytes = parse_size(size, "disk size")
    except ArgumentError as error:
        raise BmfsUsageError(str(error)) from None
    if nbytes < MIN_DISK_SIZE:
        raise BmfsUsageError(f"a BMFS disk needs at least {MIN_DISK_SIZE >> 20} MiB, not {nbytes} bytes")
    path = os.fspath(path)
    check_disk_path(path)
    mode = 0o666 & ~_umask()
    if os.path.exists(path):
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise BmfsUsageError(f"{path}: initialize makes image files; for a block device use `format`")
        if info.st_size > 0 and not force:
            raise BmfsError(f"{path}: {_what_is_there(path)}; initialize would replace it: add --force")
        mode = stat.S_IMODE(info.st_mode)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, work = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".new")
    except OSError as error:
        raise BmfsError(f"{path}: cannot make the image in {directory}: {error.strerror}") from None
    try:
        try:
            os.fchmod(fd, mode)
            os.ftruncate(fd, nbytes)                   # zeros (sparse), as upstream's fill
        except OSError as error:
            raise BmfsError(f"{path}: cannot make an image of {nbytes} bytes here: {error.strerror}") from None
        finally:
            os.close(fd)
        if progress:
            progress(nbytes, nbytes)
        disk = Disk.open(work, check=False)
        try:
            disk.format()
            disk.device.path = path
            os.fsync(disk.device.fd)
            os.rename(work, path)
        except BaseException:
            disk.close()
            raise
    except BaseException:
        if os.path.exists(work):
            os.unlink(work)
        raise
    return disk


def _umask():
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _what_is_there(path):
    """'holds a BMFS disk with N files' or 'exists (N bytes)'."""
    try:
        with Disk.open(path, writable=False) as disk:
            return f"holds a BMFS disk with {len(disk.entries())} file(s)"
    except BmfsError:
        return f"exists ({os.path.getsize(path)} bytes)"


def load(name, drive=0):
    """Load file ``name`` from the BMFS disk on ``drive`` into freshly allocated memory of the
    calling thread's machine.  Returns ``(address, size)``; free the memory with
    ``machine.free(address)``."""
    from .machine import current_machine
    from .nvs import b_nvs_read
    machine = current_machine()
    with Disk.on_drive(drive) as disk:
        entry = disk.query(name)
    sectors = -(-entry.size // SECTOR)
    address, _ = machine.alloc(max(sectors * SECTOR, 1))
    if sectors:
        b_nvs_read(address, entry.start * (BLOCK_SIZE // SECTOR), sectors, drive)
    return address, entry.size


# --- `baremetal bmfs` --------------------------------------------------------------------------

USAGE = """baremetal bmfs DISK COMMAND [ARGS]
commands:
  initialize SIZE [--force]  make DISK a new, formatted image of SIZE (e.g. 64M; at least 6M);
                           an existing file is replaced only with --force
  format [/force]          write an empty BMFS on DISK; a disk with a BMFS needs /force (--force)
  list                     the files: name, size in bytes, reserved MiB
  create NAME [MiB]        reserve space for a file (rounded up to even MiB; asked for on a
                           terminal when left out)
  read NAME [HOSTFILE]     copy a file out (default host file: NAME in the current directory)
  write NAME [HOSTFILE]    copy a host file in (default: NAME); creates the entry if missing
  delete NAME              delete a file
  query NAME               one file's record"""


def _listing(disk):
    lines = [f"Disk Size: {disk.size >> 20} MiB",
             f"{'Name':<32}|{'Size (B)':>20}|{'Reserved (MiB)':>20}",
             "=" * 74]
    lines += [f"{e.name:<32} {e.size:>20} {e.reserved_mib:>20}" for e in disk.entries()]
    return "\n".join(lines)


def _progress_bar(total, description):
    """(callback, finish) drawing a rich progress bar when total is large, else no-ops."""
    if total <= PROGRESS_MIN:
        return None, lambda: None
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
    bar = Progress("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   transient=False)
    bar.start()
    task = bar.add_task(description, total=total)
    return (lambda done, _total: bar.update(task, completed=done)), bar.stop


def _arguments(command, args, minimum, maximum):
    if not minimum <= len(args) <= maximum:
        raise BmfsUsageError(f"{command}: expected {minimum}{'' if minimum == maximum else f'..{maximum}'} "
                        f"argument(s), got {len(args)} (see `baremetal bmfs --help`)")
    return list(args) + [None] * (maximum - len(args))


FORCE = ("/force", "--force")


def _force(args):
    """(args without /force and --force, whether one was given)."""
    rest = [a for a in args if a.lower() not in FORCE]
    return rest, len(rest) != len(args)


def _ask_size(name, out):
    """create NAME without a size: ask on a terminal (as upstream), refuse otherwise."""
    if not sys.stdin.isatty():
        raise BmfsUsageError(f"create: give the size in MiB (create {name} MiB); without it the size "
                             f"is asked for, which needs a terminal")
    print("Maximum file size in MiB: ", end="", file=out, flush=True)
    answer = sys.stdin.readline().strip()
    if not answer.isdigit():
        raise BmfsError(f"create: the size is a whole number of MiB, got {answer!r}")
    return answer


def _initialize_progress(out):
    """upstream's fill report, on a terminal only."""
    if not out.isatty():
        return None
    return lambda done, total: print(f"Formatting disk: {done} of {total} bytes "
                                     f"({100 * done // total}%)", file=out)


def run_command(disk_path, command, args, out=None, err=None):
    """One `baremetal bmfs` command.  Raises BmfsError (BmfsUsageError for usage mistakes);
    returns None.  Output goes to ``out`` (default stdout), warnings about damaged records to
    ``err`` (default stderr)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    command = command.lower()
    if command == "initialize":
        args, force = _force(args)
        (size,) = _arguments(command, args, 1, 1)
        initialize(disk_path, size, force=force, progress=_initialize_progress(out)).close()
        print(f"{disk_path}: a new BMFS disk of {parse_size(size) >> 20} MiB", file=out)
        return
    if command == "format":
        args, force = _force(args)
        _arguments(command, args, 0, 0)
        with Disk.open(disk_path, check=False) as disk:
            if not force:
                try:
                    disk._check()
                    count = len(disk.entries())
                except BmfsError:
                    count = None                       # no BMFS there: nothing to lose
                if count is not None:
                    raise BmfsError(f"Format aborted! {disk_path} holds a BMFS disk with {count} "
                                    f"file(s); `format /force` (or --force) erases them")
            disk.format()
        return
    commands = ("list", "create", "read", "write", "delete", "query")
    if command not in commands:
        raise BmfsUsageError(f"unknown command {command!r} (commands: initialize, format, {', '.join(commands)})")
    with Disk.open(disk_path, writable=command in ("create", "write", "delete")) as disk:
        for warning in disk.warnings():
            print(warning, file=err)
        if command == "list":
            _arguments(command, args, 0, 0)
            print(_listing(disk), file=out)
        elif command == "create":
            name, mib = _arguments(command, args, 1, 2)
            if mib is None:
                _name_bytes(name)
                if disk.exists(name):
                    raise BmfsError(f"{disk.device.path}: a file {name!r} already exists")
                mib = _ask_size(name, out)
            if not mib.isdigit():
                raise BmfsError(f"create: the size is a whole number of MiB, got {mib!r}")
            entry = disk.create(name, int(mib))
            print(f"{entry.name}: {entry.reserved_mib} MiB reserved at block {entry.start}", file=out)
        elif command == "read":
            name, host = _arguments(command, args, 1, 2)
            size = disk.query(name).size
            callback, finish = _progress_bar(size, f"reading {name}")
            try:
                disk.read(name, host or name, progress=callback)
            finally:
                finish()
        elif command == "write":
            name, host = _arguments(command, args, 1, 2)
            host = host or name
            try:
                size = os.stat(host).st_size
            except OSError as error:
                raise BmfsError(f"{host}: cannot read it: {error.strerror}") from None
            callback, finish = _progress_bar(size, f"writing {name}")
            try:
                disk.write(name, host, progress=callback)
            finally:
                finish()
        elif command == "delete":
            (name,) = _arguments(command, args, 1, 1)
            disk.delete(name)
        elif command == "query":
            (name,) = _arguments(command, args, 1, 1)
            e = disk.query(name)
            print(f"name {e.name}\nsize {e.size}\nreserved {e.reserved_mib} MiB\n"
                  f"start block {e.start}\nrecord {e.index}", file=out)
