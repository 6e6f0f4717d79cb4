"""Drives: b_nvs_read / b_nvs_write over real files (O_DIRECT), a loop device, ramfs/tmpfs."""
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pybaremetal as bm
from pybaremetal._native import ffi, lib
from pybaremetal.errors import recorded_error

SECTOR = bm.SECTOR_SIZE


def _fs_type(path):
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()


@pytest.fixture
def disk_dir(tmp_path):
    """A directory on the machine's disk (O_DIRECT-capable), not tmpfs; removed afterwards."""
    if _fs_type(str(tmp_path)) not in ("tmpfs", "ramfs"):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="pybaremetal-nvs-") as path:
        yield pathlib_path(path)


def pathlib_path(path):
    import pathlib
    return pathlib.Path(path)


def pattern(sectors, seed=0):
    """Bytes that differ per sector and per byte: any misplaced sector shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, sectors * SECTOR, dtype=np.uint8).tobytes()


def image(directory, name="disk.img", sectors=64, seed=1):
    path = directory / name
    path.write_bytes(pattern(sectors, seed))
    return path


def unaligned_buffer(size):
    """A writable view of `size` bytes that starts 1 byte past a 4096-aligned address."""
    raw = np.zeros(size + 2 * SECTOR, dtype=np.uint8)
    start = (-raw.ctypes.data) % SECTOR + 1
    return memoryview(raw[start:start + size])


@contextlib.contextmanager
def machine_with(*drives, cores=1, memory="16M"):
    with bm.Machine(cores=cores, memory=memory, console="capture", drives=drives) as m:
        yield m


def c_call(fn, mem, start, num, drive):
    """The C face directly (what a C app or a binary gets): (value, recorded error code)."""
    value = fn(ffi.cast("void *", mem) if isinstance(mem, int) else mem, start, num, drive)
    return value, recorded_error()[0]


# --- round trips ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_nvs_round_trip_random_ranges_leaves_neighbours_untouched(data):
    with tempfile.TemporaryDirectory(dir=_disk_root()) as directory:
        path = image(pathlib_path(directory), sectors=48)
        expected = bytearray(path.read_bytes())
        with machine_with(str(path)) as m:
            addr, view = m.alloc(48 * SECTOR + SECTOR)
            for _ in range(data.draw(st.integers(1, 4))):
                start = data.draw(st.integers(0, 47))
                num = data.draw(st.integers(1, 48 - start))
                shift = data.draw(st.sampled_from([0, 1, 512, 4095]))
                payload = pattern(num, seed=data.draw(st.integers(0, 2**32)))    # random bytes
                if data.draw(st.booleans()):
                    source = bytearray(shift) + bytearray(payload)     # host buffer, maybe unaligned
                    mem = memoryview(source)[shift:]
                else:
                    view[shift:shift + num * SECTOR] = np.frombuffer(payload, np.uint8)
                    mem = addr + shift                                 # machine address
                assert bm.b_nvs_write(mem, start, num) == num
                expected[start * SECTOR:(start + num) * SECTOR] = payload
                back = bytearray(num * SECTOR + 2)
                back[0] = back[-1] = 0xA5
                assert bm.b_nvs_read(memoryview(back)[1:-1], start, num) == num
                assert back[1:-1] == payload and back[0] == back[-1] == 0xA5
                assert path.read_bytes() == expected                      # neighbours untouched


def _disk_root():
    root = tempfile.gettempdir()
    return root if _fs_type(root) not in ("tmpfs", "ramfs") else "/var/tmp"


def test_nvs_large_requests_split_in_flight_round_trip(disk_dir):
    path = disk_dir / "big.img"
    with machine_with(bm.Drive(path, create="24M"), memory="64M") as m:
        drive = m.drives[0]
        assert drive.direct and drive.queue_depth == 8
        addr, view = m.alloc(20 << 20)
        data = np.frombuffer(pattern(5 * 256, seed=7), np.uint8)      # 5 MiB, odd piece count
        view[:data.size] = data
        assert bm.b_nvs_write(addr, 3, 5 * 256) == 5 * 256
        view[:data.size] = 0
        assert bm.b_nvs_read(addr, 3, 5 * 256) == 5 * 256
        assert np.array_equal(view[:data.size], data)
        drive.queue_depth = 1                                         # one pread for the whole call
        view[:data.size] = 0
        assert bm.b_nvs_read(addr + SECTOR, 3, 5 * 256) == 5 * 256
        assert np.array_equal(view[SECTOR:SECTOR + data.size], data)
    with open(path, "rb") as f:
        f.seek(3 * SECTOR)
        assert f.read(data.size) == data.tobytes()


def test_nvs_unaligned_buffers_bounce_through_the_core_buffer(disk_dir):
    path = image(disk_dir, sectors=600)
    with machine_with(str(path)) as m:
        raw = bytearray(600 * SECTOR + 3)
        mem = memoryview(raw)[3:]
        assert bm.b_nvs_read(mem, 0, 600) == 600                      # 2.3 MiB: three bounce chunks
        assert bytes(mem) == path.read_bytes()
        assert m.drives[0].bounced >= 3
        new = pattern(300, seed=9)
        src = bytearray(b"\0" + new)
        assert bm.b_nvs_write(memoryview(src)[1:], 150, 300) == 300
    assert path.read_bytes()[150 * SECTOR:450 * SECTOR] == new


# --- errors: C value and Python exception, nothing touched -------------------------------------

def test_nvs_write_past_end_touches_nothing(disk_dir):
    path = image(disk_dir, sectors=8)
    before = path.read_bytes()
    with machine_with(str(path)):
        data = bytearray(pattern(4, seed=3))
        assert c_call(lib.b_nvs_write, ffi.from_buffer(data), 6, 4, 0) == (0, 3)
        assert c_call(lib.b_nvs_write, ffi.from_buffer(data), 8, 1, 0) == (0, 3)
        assert c_call(lib.b_nvs_write, ffi.from_buffer(data), 2**64 - 1, 2, 0) == (0, 3)
        with pytest.raises(bm.NvsError, match=r"drive 0 .*sectors 6\.\.9 are past its end .*8 sectors"):
            bm.b_nvs_write(data, 6, 4)
    assert path.read_bytes() == before


def test_nvs_read_past_end_touches_nothing(disk_dir):
    path = image(disk_dir, sectors=8)
    with machine_with(str(path)):
        buf = bytearray(b"\x5a" * 4 * SECTOR)
        assert c_call(lib.b_nvs_read, ffi.from_buffer(buf), 7, 2, 0) == (0, 3)
        with pytest.raises(bm.NvsError, match="past its end"):
            bm.b_nvs_read(buf, 7, 2)
        assert buf == b"\x5a" * 4 * SECTOR


def test_nvs_invalid_drive_returns_0_and_raises(disk_dir):
    path = image(disk_dir, sectors=8)
    with machine_with(str(path)):
        buf = bytearray(SECTOR)
        assert c_call(lib.b_nvs_read, ffi.from_buffer(buf), 0, 1, 1) == (0, 2)
        assert c_call(lib.b_nvs_write, ffi.from_buffer(buf), 0, 1, 2**63) == (0, 2)
        with pytest.raises(bm.NvsError, match=r"no drive 1 \(the machine has 1 drive\)"):
            bm.b_nvs_read(buf, 0, 1, drive=1)
        with pytest.raises(bm.NvsError, match="no drive 3"):
            bm.b_nvs_read(buf, 0, 0, drive=3)
    with machine_with():
        with pytest.raises(bm.NvsError, match=r"no drive 0 \(the machine has 0 drives\)"):
            bm.b_nvs_write(bytes(SECTOR), 0, 1)


def test_nvs_num_zero_does_nothing_and_returns_0(disk_dir):
    path = image(disk_dir, sectors=8)
    before = path.read_bytes()
    with machine_with(str(path)) as m:
        buf = bytearray(b"\x11" * SECTOR)
        assert c_call(lib.b_nvs_write, ffi.from_buffer(buf), 0, 0, 0) == (0, 0)
        assert bm.b_nvs_read(buf, 3, 0) == 0
        assert bm.b_nvs_write(b"", 8, 0) == 0
        assert buf == b"\x11" * SECTOR
        assert m.drives[0].sectors_read == m.drives[0].sectors_written == 0
    assert path.read_bytes() == before


def test_nvs_python_face_rejects_bad_buffers_and_addresses(disk_dir):
    path = image(disk_dir, sectors=8)
    before = path.read_bytes()
    with machine_with(str(path)) as m:
        with pytest.raises(bm.NvsError, match="holds 4096 bytes, the call needs 8192"):
            bm.b_nvs_read(bytearray(SECTOR), 0, 2)
        with pytest.raises(bm.NvsError, match="read-only buffer"):
            bm.b_nvs_read(bytes(SECTOR), 0, 1)
        with pytest.raises(bm.NvsError, match="outside the machine's memory"):
            bm.b_nvs_read(m.base + m.memory_size - SECTOR, 0, 2)
        with pytest.raises(bm.NvsError, match="outside the machine's memory"):
            bm.b_nvs_write(12345, 0, 1)
        with pytest.raises(bm.NvsError, match="start must be an int"):
            bm.b_nvs_write(bytes(SECTOR), -1, 1)
        with pytest.raises(bm.NvsError, match="num must be an int"):
            bm.b_nvs_write(bytes(SECTOR), 0, 1.0)
        with pytest.raises(bm.NvsError, match="drive must be an int"):
            bm.b_nvs_write(bytes(SECTOR), 0, 1, drive=2**64)
    assert path.read_bytes() == before


def test_nvs_read_only_drive_reads_and_refuses_writes(disk_dir):
    path = image(disk_dir, sectors=8)
    before = path.read_bytes()
    with machine_with(f"{path},ro") as m:
        assert m.drives[0].read_only
        buf = bytearray(2 * SECTOR)
        assert bm.b_nvs_read(buf, 1, 2) == 2 and buf == before[SECTOR:3 * SECTOR]
        assert c_call(lib.b_nvs_write, ffi.from_buffer(buf), 0, 1, 0) == (0, 5)
        with pytest.raises(bm.NvsError, match=r"drive 0 \(.*disk.img\) is read-only"):
            bm.b_nvs_write(buf, 0, 1)
    assert path.read_bytes() == before


def test_nvs_host_error_midway_returns_the_prefix(disk_dir):
    path = image(disk_dir, sectors=16)
    with machine_with(str(path)):
        os.truncate(path, 10 * SECTOR)                  # the image shrinks under the machine
        buf = bytearray(16 * SECTOR)
        assert c_call(lib.b_nvs_read, ffi.from_buffer(buf), 0, 16, 0) == (10, 4)
        with pytest.raises(bm.NvsError, match="I/O error at sector 10") as error:
            bm.b_nvs_read(buf, 0, 16)
        assert error.value.transferred == 10


def test_nvs_calls_outside_a_machine_raise_no_machine():
    buf = bytearray(SECTOR)
    assert c_call(lib.b_nvs_read, ffi.from_buffer(buf), 0, 1, 0) == (0, 1)
    with pytest.raises(bm.NoMachineError):
        bm.b_nvs_read(buf, 0, 1)


# --- attaching ------------------------------------------------------------------------------------

def test_drive_size_not_a_multiple_of_4096_is_refused(disk_dir):
    path = disk_dir / "odd.img"
    path.write_bytes(b"x" * (SECTOR + 100))
    with pytest.raises(bm.NvsError, match=r"4196 bytes\) is not a multiple of 4096 \(grow it with create=SIZE\)"):
        bm.Machine(cores=1, memory="8M", drives=[str(path)])
    with machine_with(f"{path},create=12K") as m:       # create= grows it to whole sectors
        assert m.drives[0].sectors == 3
    assert path.stat().st_size == 3 * SECTOR and path.read_bytes()[:SECTOR + 100] == b"x" * (SECTOR + 100)


def test_drive_create_makes_a_new_image_and_never_shrinks(disk_dir):
    path = disk_dir / "new.img"
    with machine_with(f"{path},create=1M,durable") as m:
        drive = m.drives[0]
        assert (drive.path, drive.sectors, drive.durable, drive.read_only) == (str(path), 256, True, False)
        assert bm.b_nvs_write(b"\x42" * SECTOR, 255, 1) == 1
    with machine_with(bm.Drive(path, create="4K")) as m:
        assert m.drives[0].sectors == 256
    assert path.read_bytes()[-SECTOR:] == b"\x42" * SECTOR


def test_drive_spec_errors_are_clear(disk_dir):
    with pytest.raises(bm.NvsError, match="cannot open it: No such file"):
        bm.Machine(cores=1, memory="8M", drives=[str(disk_dir / "missing.img")])
    with pytest.raises(bm.ArgumentError, match="unknown option 'fast'"):
        bm.Machine(cores=1, memory="8M", drives=[f"{disk_dir}/x.img,fast"])
    with pytest.raises(bm.NvsError, match="not a regular file or a block device"):
        bm.Machine(cores=1, memory="8M", drives=["/dev/null"])


def test_machine_drives_list_geometry_and_counters(disk_dir):
    a, b = image(disk_dir, "a.img", 8), image(disk_dir, "b.img", 4)
    # poll for up to 10 s: a loaded machine must not turn a polled completion into a slept one
    with machine_with(bm.Drive(a, poll_us=10_000_000), bm.Drive(b, read_only=True)) as m:
        first, second = m.drives
        assert (first.number, first.sectors, second.number, second.sectors) == (0, 8, 1, 4)
        unaligned = unaligned_buffer(5 * SECTOR)              # never 4096-aligned: always bounced
        assert bm.b_nvs_read(unaligned[:3 * SECTOR], 0, 3) == 3
        assert bm.b_nvs_write(unaligned[:2 * SECTOR], 6, 2) == 2
        assert bm.b_nvs_read(bytearray(SECTOR), 3, 1, drive=1) == 1
        assert first.stats() == {"reads": 1, "writes": 1, "sectors_read": 3, "sectors_written": 2,
                                 "errors": 0, "bounced": 2, "polled": 2}
        assert (second.reads, second.sectors_read, second.writes) == (1, 1, 0)
        fds = [d._info.fd for d in m.drives]
    for fd in fds:                                      # halt closed them
        with pytest.raises(OSError):
            os.fstat(fd)


# --- devices and filesystems ------------------------------------------------------------------------

@contextlib.contextmanager
def loop_device(backing):
    device = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=True)


def test_nvs_loop_block_device_with_512_byte_sectors(disk_dir):
    backing = image(disk_dir, "backing.img", sectors=256, seed=5)
    with loop_device(backing) as device:
        sector_size = subprocess.run(["blockdev", "--getss", device], capture_output=True, text=True).stdout
        assert sector_size.strip() == "512"
        with machine_with(device) as m:
            drive = m.drives[0]
            assert drive.sectors == 256 and drive.direct
            buf = bytearray(10 * SECTOR + 1)
            assert bm.b_nvs_read(memoryview(buf)[1:], 100, 10) == 10
            assert buf[1:] == backing.read_bytes()[100 * SECTOR:110 * SECTOR]
            addr, view = m.alloc(2 << 20)
            view[:2 * SECTOR] = 0x77
            assert bm.b_nvs_write(addr, 254, 2) == 2
            with pytest.raises(bm.NvsError, match="past its end"):
                bm.b_nvs_write(addr, 255, 2)
    assert backing.read_bytes()[254 * SECTOR:] == b"\x77" * 2 * SECTOR


@contextlib.contextmanager
def ramfs():
    """A ramfs mount (a filesystem that refuses O_DIRECT) in a fresh directory."""
    directory = tempfile.mkdtemp(prefix="pybaremetal-ramfs-", dir="/var/tmp")
    subprocess.run(["mount", "-t", "ramfs", "none", directory], check=True)
    try:
        yield pathlib_path(directory)
    finally:
        subprocess.run(["umount", directory], check=True)
        os.rmdir(directory)


def test_nvs_filesystem_without_o_direct_falls_back_to_buffered_with_a_warning():
    with ramfs() as directory:
        path = image(directory, sectors=8)
        with pytest.warns(bm.NvsWarning, match="refuses O_DIRECT; using buffered I/O with fdatasync"):
            m = bm.Machine(cores=1, memory="8M", console="capture", drives=[f"{path},durable"])
        with m:
            assert not m.drives[0].direct and m.drives[0].durable
            buf = bytearray(b"\x01" + pattern(3, seed=4))
            assert bm.b_nvs_write(memoryview(buf)[1:], 2, 3) == 3
            assert m.drives[0].bounced == 0                 # buffered: no alignment needed
        assert path.read_bytes()[2 * SECTOR:5 * SECTOR] == buf[1:]


def test_nvs_tmpfs_drive_works():
    with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
        path = image(pathlib_path(directory), sectors=8)
        with machine_with(f"{path},durable") as m:
            assert bm.b_nvs_write(bytes(range(256)) * 16, 7, 1) == 1
            buf = bytearray(SECTOR)
            assert bm.b_nvs_read(buf, 7, 1) == 1 and buf == bytes(range(256)) * 16
            assert m.drives[0].errors == 0


# --- concurrency, durability, halting ------------------------------------------------------------------

def test_nvs_concurrent_writers_on_distinct_ranges_from_all_cores(disk_dir):
    cores, per_core, rounds = 4, 32, 12
    path = disk_dir / "shared.img"
    with machine_with(bm.Drive(path, create=cores * per_core * SECTOR), cores=cores) as m:
        errors = []

        def writer(core):
            try:
                m._bind(core)
                assert bm.b_system(bm.SMP_ID) == core
                for r in range(rounds):
                    data = bytes([core * 16 + r]) * (per_core * SECTOR)
                    mem = memoryview(b"\0" + data)[1:] if r % 2 else data   # bounced and direct
                    assert bm.b_nvs_write(mem, core * per_core, per_core) == per_core
                    back = bytearray(per_core * SECTOR + 1)
                    assert bm.b_nvs_read(memoryview(back)[1:], core * per_core, per_core) == per_core
                    assert back[1:] == data
            except BaseException as error:          # reported by the main thread
                errors.append(error)
            finally:
                m._unbind_all()

        threads = [threading.Thread(target=writer, args=(core,)) for core in range(cores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    content = path.read_bytes()
    for core in range(cores):
        chunk = content[core * per_core * SECTOR:(core + 1) * per_core * SECTOR]
        assert chunk == bytes([core * 16 + rounds - 1]) * len(chunk)


CHILD = textwrap.dedent("""
    import sys, time
    import pybaremetal as bm
    m = bm.Machine(cores=1, memory="8M", console="capture", drives=[sys.argv[1] + ",durable"])
    m.boot()
    data = bytes([0xC3]) * 4096 * 4
    assert bm.b_nvs_write(data, 2, 4) == 4
    print("written", flush=True)
    time.sleep(60)
""")


def test_nvs_durable_write_survives_sigkill_right_after_the_call(disk_dir):
    path = image(disk_dir, sectors=8)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "written\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with machine_with(str(path)):
        buf = bytearray(4 * SECTOR)
        assert bm.b_nvs_read(buf, 2, 4) == 4 and buf == b"\xc3" * 4 * SECTOR


APP = textwrap.dedent("""
    import sys, time
    import pybaremetal as bm

    def main():
        assert bm.b_nvs_write(b"\\x5e" * 4096, int(sys.argv[1]), 1) == 1
        print("written", flush=True)
        if sys.argv[2] == "wait":
            time.sleep(60)
        raise RuntimeError("the app fails after writing")
""")


@pytest.mark.parametrize("ending", ["sigterm", "sigint", "exception"])
def test_cli_drive_is_flushed_and_closed_on_signals_and_app_exception(disk_dir, ending):
    path, app = disk_dir / "cli.img", disk_dir / "app.py"
    app.write_text(APP)
    command = [sys.executable, "-m", "pybaremetal", "run", str(app), "--cores", "1", "--memory", "8M",
               "--drive", f"{path},create=64K", "--", "5", "fail" if ending == "exception" else "wait"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "written\n"
        if ending != "exception":
            child.send_signal(signal.SIGTERM if ending == "sigterm" else signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == {"sigterm": 143, "sigint": 130, "exception": 1}[ending], err
    assert path.read_bytes()[5 * SECTOR:6 * SECTOR] == b"\x5e" * SECTOR
    assert path.stat().st_size == 16 * SECTOR


FLAT_APP = """BITS 64
DEFAULT REL
ORG 0xFFFF800000000000
    mov rax, 3                  ; b_nvs_write: RAX start, RCX count, RDX drive, RSI memory
    mov rcx, 1
    xor edx, edx
    lea rsi, [outbuf]
    call [abs 0x100038]
    cmp rcx, 1
    jne fail
    xor eax, eax                ; b_nvs_read: RDI memory
    mov rcx, 1
    xor edx, edx
    lea rdi, [inbuf]
    call [abs 0x100030]
    cmp rcx, 1
    jne fail
    lea rsi, [inbuf]            ; b_output the first 8 bytes read
    mov rcx, 8
    call [abs 0x100018]
    mov rax, 1000               ; past the end: RCX = 0, nothing read
    mov rcx, 1
    xor edx, edx
    lea rdi, [inbuf]
    call [abs 0x100030]
    mov rax, rcx
    ret
fail:
    mov rax, 7
    ret
align 4096
outbuf: times 4096 db 'Z'
inbuf: times 4096 db 0
"""


def test_flat_binary_reaches_the_same_drive_calls(disk_dir):
    from pybaremetal.apps import binary
    path = image(disk_dir, sectors=8)
    source, app = disk_dir / "nvs.asm", disk_dir / "nvs.app"
    source.write_text(FLAT_APP)
    subprocess.run(["nasm", "-f", "bin", str(source), "-o", str(app)], check=True)
    first = path.read_bytes()[:8]
    with bm.Machine(cores=1, memory="16M", console="capture", drives=[str(path)]) as m:
        assert binary.run(m, str(app), []) == 0
        assert m.console.output() == first
        assert (m.drives[0].reads, m.drives[0].writes) == (1, 1)     # the refused read moved nothing
    assert path.read_bytes()[3 * SECTOR:4 * SECTOR] == b"Z" * SECTOR


# --- completion polling ------------------------------------------------------------------------

def test_nvs_direct_drives_poll_for_completion_and_poll_0_sleeps(disk_dir):
    path = disk_dir / "poll.img"
    with machine_with(bm.Drive(path, create="8M"), f"{path},poll=0", memory="32M") as m:
        polling, sleeping = m.drives
        assert polling.direct and polling.poll_us == 20000 and sleeping.poll_us == 0
        addr, view = m.alloc(2 << 20)
        data = np.frombuffer(pattern(300, seed=11), np.uint8)
        for drive, sectors in ((0, 1), (0, 300), (1, 1), (1, 300)):  # one request; split in flight
            view[:sectors * SECTOR] = data[:sectors * SECTOR]
            assert bm.b_nvs_write(addr, 5, sectors, drive) == sectors
            view[:] = 0
            assert bm.b_nvs_read(addr, 5, sectors, drive) == sectors
            assert np.array_equal(view[:sectors * SECTOR], data[:sectors * SECTOR])
            assert not view[sectors * SECTOR:].any()                # nothing past the request
        assert polling.polled >= 4 and sleeping.polled == 0
        polling.poll_us = 0
        before = polling.polled
        assert bm.b_nvs_read(addr, 0, 1) == 1 and polling.polled == before
        sleeping.poll_us = 500
        assert bm.b_nvs_read(addr, 0, 1, 1) == 1 and sleeping.polled == 1


def test_nvs_poll_setting_errors_are_clear(disk_dir):
    with machine_with(str(image(disk_dir, sectors=8))) as m:
        for bad in (-1, 10_000_001, 1.5, True, "10"):
            with pytest.raises(bm.ArgumentError, match="poll_us must be an int 0..10000000"):
                m.drives[0].poll_us = bad
        assert m.drives[0].poll_us == 20000
    with pytest.raises(bm.ArgumentError, match="unknown option 'poll=fast'"):
        bm.Machine(cores=1, memory="8M", drives=[f"{disk_dir}/x.img,poll=fast"])
    with ramfs() as directory:
        path = image(directory, sectors=8)
        with pytest.warns(bm.NvsWarning):
            m = bm.Machine(cores=1, memory="8M", console="capture", drives=[f"{path},poll=100"])
        with m:
            assert m.drives[0].poll_us == 0                         # buffered: nothing to poll
            with pytest.raises(bm.NvsError, match="is buffered: there is no completion to poll"):
                m.drives[0].poll_us = 100
