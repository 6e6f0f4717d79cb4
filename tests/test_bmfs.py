"""BMFS: the on-disk format, the library, `baremetal bmfs`, loading files into a machine."""
import hashlib
import io
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pybaremetal as bm
from pybaremetal import bmfs
from pybaremetal.bmfs import BLOCK_SIZE, BmfsError, Disk

MiB = 1 << 20


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(*args, cwd=None):
    """`baremetal bmfs ...` as a user runs it: (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "bmfs", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


def cli_here(capsys, *args):
    """The same, in this process (quicker): (exit code, stdout, stderr)."""
    from pybaremetal.cli import main
    capsys.readouterr()
    code = main(["bmfs", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def records(path):
    """The directory as the contract describes it, parsed independently of bmfs.py."""
    raw = path.read_bytes()[4096:8192]
    out = []
    for i in range(64):
        name, start, reserved, size, unused = struct.unpack_from("<32sQQQQ", raw, 64 * i)
        if name[0] == 0:
            break
        out.append((name.split(b"\0")[0], start, reserved, size) if name[0] != 1 else None)
    return out


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    bmfs.initialize(path, "16M").close()
    return path


# --- format ------------------------------------------------------------------------------------

def test_initialize_makes_a_tagged_image_with_an_empty_directory(tmp_path):
    path = tmp_path / "new.img"
    code, out, err = cli(path, "initialize", "8M")
    assert code == 0, err
    data = path.read_bytes()
    assert len(data) == 8 * MiB
    assert data[1024:1536] == b"BMFS" + bytes(508)
    assert data[4096:8192] == bytes(4096)
    code, out, _ = cli(path, "list")
    assert out.splitlines() == ["Disk Size: 8 MiB",
                                "Name                            |            Size (B)|      Reserved (MiB)",
                                "=" * 74]


def test_initialize_smaller_than_6_mib_is_refused_and_creates_nothing(tmp_path):
    code, _, err = cli(tmp_path / "tiny.img", "initialize", "5M")
    assert code == 2 and "at least 6 MiB" in err
    assert not (tmp_path / "tiny.img").exists()


def test_format_keeps_the_boot_sector_and_empties_the_directory(disk):
    with Disk.open(disk) as d:
        d.create("a.app", 2)
    with open(disk, "r+b") as f:
        f.write(b"\xeb\x3c" + b"B" * 510)                 # a boot sector
    code, _, err = cli(disk, "format", "/force")
    assert code == 0, err
    data = disk.read_bytes()
    assert data[:512] == b"\xeb\x3c" + b"B" * 510
    assert records(disk) == [] and data[4096:8192] == bytes(4096)


def test_format_makes_a_bmfs_disk_of_any_image(tmp_path):
    path = tmp_path / "plain.img"
    path.write_bytes(b"\xff" * 6 * MiB)
    assert cli(path, "list")[0] == 1
    assert cli(path, "format")[0] == 0
    assert cli(path, "create", "f", "1")[0] == 0
    assert records(path) == [(b"f", 1, 1, 0)]


# --- the records, byte for byte ----------------------------------------------------------------

def test_create_reserves_even_mib_first_fit_as_upstream(disk):
    assert cli(disk, "create", "one", "1")[0] == 0        # 1 MiB -> 2 MiB: one block
    assert cli(disk, "create", "two", "3")[0] == 0        # 3 MiB -> 4 MiB: two blocks
    assert cli(disk, "create", "three", "2")[0] == 0
    assert records(disk) == [(b"one", 1, 1, 0), (b"two", 2, 2, 0), (b"three", 4, 1, 0)]
    assert cli(disk, "delete", "two")[0] == 0
    assert disk.read_bytes()[4096 + 64] == 0x01           # deleted marker
    assert cli(disk, "create", "four", "2")[0] == 0       # reuses the record and the hole
    assert records(disk) == [(b"one", 1, 1, 0), (b"four", 2, 1, 0), (b"three", 4, 1, 0)]
    raw = disk.read_bytes()[4096:4096 + 4 * 64]
    assert raw[64:96] == b"four" + bytes(28) and raw[3 * 64] == 0


def test_write_and_read_round_trip_host_files(disk, tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 3 * MiB + 17, dtype=np.uint8).tobytes()
    (tmp_path / "kernel.app").write_bytes(data)
    code, _, err = cli(disk, "write", "kernel.app", cwd=tmp_path)  # no entry: one sized to fit
    assert code == 0, err
    assert records(disk) == [(b"kernel.app", 1, 2, len(data))]
    image = disk.read_bytes()
    assert image[BLOCK_SIZE:BLOCK_SIZE + len(data)] == data
    assert image[BLOCK_SIZE + len(data):3 * BLOCK_SIZE] == bytes(3 * BLOCK_SIZE - BLOCK_SIZE - len(data))
    code, _, err = cli(disk, "read", "kernel.app", tmp_path / "back.app")
    assert code == 0, err
    assert (tmp_path / "back.app").read_bytes() == data
    (tmp_path / "kernel.app").unlink()
    assert cli(disk, "read", "kernel.app", cwd=tmp_path)[0] == 0     # default host file: NAME
    assert (tmp_path / "kernel.app").read_bytes() == data


def test_library_reads_and_writes_memory(disk):
    with Disk.open(disk) as d:
        payload = bytes(range(256)) * 40 + b"tail"
        entry = d.write("blob", payload)
        assert (entry.size, entry.reserved_mib) == (len(payload), 2)
        assert d.read("blob") == payload
        buf = np.zeros(len(payload) + 10, np.uint8)
        d.read("blob", buf)
        assert buf[:len(payload)].tobytes() == payload and not buf[len(payload):].any()
        assert d.query("blob") == entry
        d.write("blob", b"short")
        assert d.read("blob") == b"short"


def test_a_disk_laid_out_by_upstreams_tool_reads_the_same(tmp_path):
    """Bytes as upstream's tool leaves them: tag, records, a deleted record, the 0x00 end."""
    path = tmp_path / "upstream.img"
    image = bytearray(12 * MiB)
    image[1024:1028] = b"BMFS"
    directory = [(b"init.app", 1, 1, 5000), (b"\x01old", 2, 1, 0), (b"data.bin", 3, 2, 3 * MiB)]
    for i, (name, start, reserved, size) in enumerate(directory):
        struct.pack_into("<32sQQQQ", image, 4096 + 64 * i, name, start, reserved, size, 0)
    image[BLOCK_SIZE:BLOCK_SIZE + 5000] = b"\x90" * 5000
    path.write_bytes(bytes(image))
    code, out, _ = cli(path, "list")
    assert code == 0
    assert out.splitlines()[3:] == [f"{'init.app':<32} {5000:>20} {2:>20}",
                                    f"{'data.bin':<32} {3 * MiB:>20} {4:>20}"]
    with Disk.open(path) as d:
        assert d.read("init.app") == b"\x90" * 5000
        assert d.create("new", 2).start == 2 and d.create("x", 2).start == 5
        assert [e.index for e in d.entries()] == [0, 1, 2, 3]


# --- errors: clear, non-zero, nothing modified ----------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["create", "a" * 32], "is 32 bytes long; BMFS names hold at most 31"),
    (["create", ""], "the file name is empty"),
    (["create", "dup"], "a file 'dup' already exists"),
    (["create", "big", "20"], "no 20 MiB run of free space"),
    (["create", "x", "0"], "whole number of MiB >= 1"),
    (["create", "x", "two"], "whole number of MiB"),
    (["read", "missing"], "no file 'missing'"),
    (["delete", "missing"], "no file 'missing'"),
    (["write", "dup", "HOST"], "2097153 bytes do not fit in the 2 MiB reserved for 'dup'"),
    (["write", "new", "NOFILE"], "cannot read it"),
    (["list", "extra"], "expected 0 argument(s)"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["create", "nosize"], "give the size in MiB"),
    (["format"], "Format aborted! "),
    (["initialize", "8M"], "holds a BMFS disk with 1 file(s); initialize would replace it: add --force"),
    (["initialize", "100T"], "initialize would replace it"),
    (["initialize", "100T", "--force"], "cannot make an image of 109951162777600 bytes here"),
    (["initialize", "5M", "--force"], "at least 6 MiB"),
])
def test_cli_errors_exit_non_zero_and_modify_nothing(disk, tmp_path, capsys, args, message):
    with Disk.open(disk) as d:
        d.create("dup", 2)
    (tmp_path / "HOST").write_bytes(b"x" * (2 * MiB + 1))
    before = digest(disk)
    args = [str(tmp_path / a) if a in ("HOST", "NOFILE") else a for a in args]
    code, _, err = cli_here(capsys, disk, *args)
    usage = any(s in message for s in ("argument(s)", "unknown command", "give the size", "6 MiB"))
    assert code == (2 if usage else 1) and message in err and err.startswith("baremetal bmfs: error:"), err
    assert len(err.splitlines()) == 1
    assert digest(disk) == before
    assert sorted(os.listdir(disk.parent)) == ["HOST", "disk.img"]          # no work file left


def test_initialize_of_a_new_file_that_fails_leaves_no_file(tmp_path, capsys):
    code, _, err = cli_here(capsys, tmp_path / "new.img", "initialize", "100T")
    assert code == 1 and "cannot make an image" in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_initialize_with_force_replaces_an_existing_disk_keeping_its_mode(disk, capsys):
    os.chmod(disk, 0o640)
    assert cli_here(capsys, disk, "initialize", "8M", "--force")[0] == 0
    assert disk.stat().st_size == 8 * MiB and records(disk) == []
    assert disk.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("force", ["/force", "/FORCE", "--force"])
def test_format_of_a_bmfs_disk_erases_it_only_when_forced(disk, capsys, force):
    with Disk.open(disk) as d:
        d.create("keep", 2)
    assert cli_here(capsys, disk, "format")[0] == 1 and records(disk) == [(b"keep", 1, 1, 0)]
    assert cli_here(capsys, disk, "format", force)[0] == 0 and records(disk) == []


@pytest.mark.parametrize("path", ["DIR", "/proc/self/mem", "/dev/null"])
def test_a_path_that_cannot_be_a_disk_is_one_line_exit_2(tmp_path, capsys, path):
    code, out, err = cli_here(capsys, str(tmp_path) if path == "DIR" else path, "list")
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "is a directory" in err or "cannot be a disk" in err


def on_terminal(args, keys=b""):
    """`baremetal bmfs ...` with stdin and stdout on a pseudo-terminal: (exit code, output)."""
    import pty
    controller, terminal = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "pybaremetal", "bmfs", *map(str, args)],
                             stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    os.write(controller, keys)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:                                  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return child.wait(timeout=30), output.decode()


def test_create_without_a_size_asks_for_it_on_a_terminal(disk):
    code, output = on_terminal([disk, "create", "asked"], b"6\n")
    assert code == 0 and "Maximum file size in MiB: " in output
    assert records(disk) == [(b"asked", 1, 3, 0)]


def test_initialize_on_a_terminal_reports_its_progress(tmp_path):
    code, output = on_terminal([tmp_path / "t.img", "initialize", "8M"])
    assert code == 0 and "Formatting disk: 8388608 of 8388608 bytes (100%)" in output


def test_not_a_bmfs_disk_is_refused(tmp_path):
    path = tmp_path / "zero.img"
    path.write_bytes(bytes(6 * MiB))
    code, _, err = cli(path, "list")
    assert code == 1 and "not a BMFS disk" in err


def test_fill_to_64_files_then_no_free_record(tmp_path):
    path = tmp_path / "wide.img"
    bmfs.initialize(path, "200M").close()
    with Disk.open(path) as d:
        for i in range(64):
            d.create(f"f{i:02}", 2)
        assert len(d.entries()) == 64
        before = digest(path)
        with pytest.raises(BmfsError, match=r"no free directory record \(64 in use\)"):
            d.create("f64", 2)
        assert digest(path) == before
        d.delete("f10")
        assert d.create("again", 2).index == 10


def test_fill_the_disk_then_no_space(disk):
    with Disk.open(disk) as d:                        # 16 MiB: blocks 1..7 hold data
        d.create("a", 6)
        d.write("b", b"x" * (8 * MiB))
        assert d.free_blocks() == 0
        with pytest.raises(BmfsError, match="no 2 MiB run of free space"):
            d.create("c", 1)
        d.delete("a")
        with pytest.raises(BmfsError, match="no 8 MiB run"):
            d.create("c", 8)
        assert d.create("c", 6).start == 1


u64 = st.one_of(st.integers(0, 10), st.integers(0, 2**64 - 1))
record = st.tuples(st.binary(min_size=1, max_size=32), u64, u64, u64)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), keep_tag=st.booleans(), structured=st.lists(record, max_size=64))
def test_fuzzed_block_0_never_crashes_the_tool(tmp_path, seed, keep_tag, structured):
    """Random bytes in block 0 (tag area, directory), or random but record-shaped directories:
    the tool either works or says 'not a BMFS disk' / 'corrupt directory' (or a plain refusal)."""
    path = tmp_path / "fuzz.img"
    image = bytearray(np.random.default_rng(seed).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    image += bytearray(6 * MiB - 8192)
    if keep_tag:
        image[1024:1029] = b"BMFS\0"
    if structured:
        for i, (name, start, reserved, size) in enumerate(structured):
            struct.pack_into("<32sQQQQ", image, 4096 + 64 * i, name, start, reserved, size, 0)
    path.write_bytes(bytes(image))
    for command, args in (("list", []), ("create", ["new", "2"]), ("read", ["x", os.devnull]),
                          ("write", ["x", os.devnull]), ("delete", ["x"])):
        try:
            bmfs.run_command(str(path), command, args, out=io.StringIO())
        except BmfsError as error:
            assert any(s in str(error) for s in ("not a BMFS disk", "corrupt directory", "no file",
                                                 "run of free space", "free directory record",
                                                 "already exists")), error


def test_a_record_outside_the_disk_is_listed_with_a_warning_and_never_read(disk):
    with open(disk, "r+b") as f:
        f.seek(4096)
        f.write(struct.pack("<32sQQQQ", b"bad", 7, 5, 0, 0))   # blocks 7..11 on an 8-block disk
    code, out, err = cli(disk, "list")
    assert code == 0 and out.splitlines()[3].split() == ["bad", "0", "10"]
    assert err == f"{disk}: warning: record 0 ('bad'): blocks 7..11 are outside the disk's data blocks 1..7\n"
    code, _, err = cli(disk, "read", "bad", os.devnull)
    assert code == 1 and "corrupt directory: record 0 ('bad')" in err


def upstream_anomalies(path):
    """A disk as upstream's tool leaves it after `create` with a 40-character name (strcpy runs
    over the starting block and the low byte of the reserved blocks) and after delete + create
    on a full disk (two records claiming block 3)."""
    image = bytearray(16 * MiB)
    image[1024:1028] = b"BMFS"
    long_name = b"a_forty_character_name_for_a_file_.bin"[:40].ljust(40, b"x")
    rows = [(b"first", 1, 2, 100), (b"\0", 0, 0, 0), (b"second", 3, 2, 5), (b"third", 3, 1, 7)]
    for i, (name, start, reserved, size) in enumerate(rows):
        struct.pack_into("<32sQQQQ", image, 4096 + 64 * i, name, start, reserved, size, 0)
    record = bytearray(struct.pack("<32sQQQQ", b"", 5, 1, 0, 0))
    record[:41] = long_name + b"\0"                       # strcpy: 40 characters and the NUL
    image[4096 + 64:4096 + 128] = record
    image[BLOCK_SIZE:BLOCK_SIZE + 100] = b"F" * 100
    path.write_bytes(bytes(image))
    return long_name


def test_upstreams_anomalies_are_listed_with_a_warning_per_bad_record(tmp_path, capsys):
    path = tmp_path / "odd.img"
    long_name = upstream_anomalies(path)
    code, out, err = cli_here(capsys, path, "list")
    assert code == 0
    names = [line[:32].rstrip() for line in out.splitlines()[3:]]
    assert names == ["first", long_name[:32].decode(), "second", "third"]
    warnings = err.splitlines()
    assert len(warnings) == 3 and all(w.startswith(f"{path}: warning: record ") for w in warnings)
    assert "record 1 " in warnings[0] and "fills all 32 bytes" in warnings[0]
    assert "record 2 ('second'): its blocks overlap those of record 3 ('third')" in warnings[1]
    assert "record 3 ('third'): its blocks overlap those of record 2 ('second')" in warnings[2]


def test_writes_never_touch_an_overlapping_range_and_new_files_avoid_it(tmp_path, capsys):
    path = tmp_path / "odd.img"
    long_name = upstream_anomalies(path)
    (tmp_path / "host").write_bytes(b"new data")
    before = digest(path)
    for name in ("second", "third"):
        code, _, err = cli_here(capsys, path, "write", name, tmp_path / "host")
        assert code == 1 and "corrupt directory" in err and "nothing was written" in err
    assert digest(path) == before
    assert cli_here(capsys, path, "read", "first", tmp_path / "back")[0] == 0           # sound files work
    assert (tmp_path / "back").read_bytes() == b"F" * 100
    assert cli_here(capsys, path, "read", "third", tmp_path / "back")[0] == 0           # reading is harmless
    with Disk.open(path) as d:
        entry = d.create("fresh", 2)                                          # clear of blocks 1..4
        assert entry.start == 5 and entry.index == 4
        d.delete(long_name.decode())                                          # by the name typed
        assert [e.index for e in d.entries()] == [0, 2, 3, 4]


def test_large_transfers_show_a_progress_bar(disk, tmp_path):
    path = tmp_path / "big.img"
    bmfs.initialize(path, "80M").close()
    host = tmp_path / "big.bin"
    with open(host, "wb") as f:
        f.truncate(65 * MiB)
    code, out, err = cli(path, "write", "big.bin", host)
    assert code == 0, err
    assert "writing big.bin" in out + err
    assert records(path) == [(b"big.bin", 1, 33, 65 * MiB)]


# --- inside a machine -------------------------------------------------------------------------

def test_load_puts_a_file_into_machine_memory(disk):
    payload = bytes(range(251)) * 1000
    with Disk.open(disk) as d:
        d.write("app.bin", payload)
    with bm.Machine(cores=1, memory="32M", console="capture", drives=[f"{disk},ro"]) as m:
        address, size = bm.bmfs.load("app.bin", drive=0)
        assert size == len(payload)
        start = m.offset(address)
        assert m.memory[start:start + size].tobytes() == payload
        with pytest.raises(BmfsError, match="no file 'nope'"):
            bm.bmfs.load("nope")
        with Disk.on_drive(0) as d:
            assert [e.name for e in d.entries()] == ["app.bin"]


def test_library_over_a_drive_writes_what_the_image_shows(disk):
    with bm.Machine(cores=1, memory="32M", console="capture", drives=[str(disk)]):
        with Disk.on_drive(0) as d:
            d.write("note.txt", b"hello from a drive")
            assert d.read("note.txt") == b"hello from a drive"
    assert records(disk) == [(b"note.txt", 1, 1, 18)]
    assert cli(disk, "list")[1].splitlines()[3].split() == ["note.txt", "18", "2"]
