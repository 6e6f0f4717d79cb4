"""The Monitor, driven through its console: scripted sessions compared byte for byte with
transcripts written from upstream's Monitor (BareMetal-Monitor 1.0 on the kernel's serial
console: LF sent as CR LF, Enter echoed as a space, cursor-left as BS), with a real BMFS disk
image and real KVM binaries."""
import os
import subprocess
import sys

import pytest

import pybaremetal as bm
from pybaremetal import bmfs, monitor
from pybaremetal.cpu import emu, kvm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_kvm = pytest.mark.skipif(not (kvm.available() or emu.available()), reason="no CPU backend for binaries")


def asm(tmp_path, name, body):
    source = tmp_path / (name + ".asm")
    source.write_text("BITS 64\nDEFAULT REL\nORG 0xFFFF800000000000\n" + body)
    image = tmp_path / name
    subprocess.run(["nasm", "-f", "bin", str(source), "-o", str(image)], check=True)
    return image


PRINT = """lea rsi, [msg]
mov rcx, msg_end - msg
call [abs 0x100018]
xor eax, eax
ret
msg: db '{text}', 10
msg_end:
"""


@pytest.fixture
def disk(tmp_path):
    path = str(tmp_path / "disk.img")
    with bmfs.initialize(path, "8M") as d:
        d.write("hello.app", str(asm(tmp_path, "hello.app", PRINT.format(text="hello from disk"))))
        d.write("notes.txt", b"just data")
    return path


def session(script, drives=(), cores=1, nics=()):
    with bm.Machine(cores=cores, memory="32M", console="capture", input=script,
                    drives=list(drives), nics=list(nics), pin=False) as m:
        monitor.run(m)
        return m.console.output()


HELP = (b"Available commands:\r\n"
        b"cls  - clear the screen\r\n"
        b"dir  - Show programs currently on disk\r\n"
        b"load - Load a program to memory (you will be prompted for the program number)\r\n"
        b"exec - Run the program currently in memory\r\n"
        b"ver  - Show the system version\r\n"
        b"peek - hex mem address and bytes (1, 2, 4, or 8) - ex \"peek 200000 8\" to read 8 bytes\r\n"
        b"poke - hex mem address and hex value (1, 2, 4, or 8 bytes) - ex \"poke 200000 00ABCDEF\" "
        b"to write 4 bytes\r\n"
        b"dump - hex mem address, hex amount, bytes (1, 2, 4, or 8) - ex \"dump 100000 10 4\"")

# Typed keys: lines end with Enter (a pipe's LF, which b_input hands out as 0x1C); \x7f is the
# Backspace key (0x0E).
SCRIPT = (b"ver\nVER\nhelp me\n\n   \nbogus\n"
          b"peek 5012 2\npeek 5020 4\npeek 5012\npeek 5012 2 1\npeek 5012 3\n"
          b"poke 300000 AB\npoke 300001 CDEF\npoke 300004 01234567\npoke 300008 0123456789ABCDEF\n"
          b"poke 300000 123\npoke 300000\npeek 300000 8\npeek FFFF800000100008 8\n"
          b"dump 300000 12 1\ndump 300000 3 1\ndump 300000 9 2\ndump 300000 5 4\ndump 300000 3 8\n"
          b"dump 300000 0 1\ndump 300000 2 3\ndump 300000 2\n"
          b"cls\ndir\nload\nexec\nab\x7fc\x7f\x7fver\nshutdown\n")

TRANSCRIPT = (
    b"\x01[cpu: 2]  [mem: 30 MiB]  [net: N/A]\r\n"
    b"\r\n> ver \r\n1.0"
    b"\r\n> VER \r\nUnknown command"
    b"\r\n> help me \r\n" + HELP +
    b"\r\n>  "
    b"\r\n>     \r\n"
    b"\r\n> bogus \r\nUnknown command"
    b"\r\n> peek 5012 2 \r\n0002"
    b"\r\n> peek 5020 4 \r\n00000020"
    b"\r\n> peek 5012 \r\nInsufficient argument(s)"
    b"\r\n> peek 5012 2 1 \r\nToo many arguments"
    b"\r\n> peek 5012 3 \r\nInvalid argument(s)"
    b"\r\n> poke 300000 AB \r\n"
    b"> poke 300001 CDEF \r\n"
    b"> poke 300004 01234567 \r\n"
    b"> poke 300008 0123456789ABCDEF \r\n"
    b"> poke 300000 123 \r\nInvalid argument(s)"
    b"\r\n> poke 300000 \r\nInsufficient argument(s)"
    b"\r\n> peek 300000 8 \r\n0123456700CDEFAB"
    b"\r\n> peek FFFF800000100008 8 \r\n0123456789ABCDEF"
    b"\r\n> dump 300000 12 1 \r\n"
    b"0000000000300000: AB EF CD 00 67 45 23 01 EF CD AB 89 67 45 23 01  | +oM gE# oM+ gE# \r\n"
    b"0000000000300010: 00 00  |   M gE# oM+ gE# "
    b"\r\n> dump 300000 3 1 \r\n"
    b"0000000000300000: AB EF CD  | +oM gE# oM+ gE# "
    b"\r\n> dump 300000 9 2 \r\n"
    b"0000000000300000: EFAB 00CD 4567 0123 CDEF 89AB 4567 0123 \r\n"
    b"0000000000300010: 0000 "
    b"\r\n> dump 300000 5 4 \r\n"
    b"0000000000300000: 00CDEFAB 01234567 89ABCDEF 01234567 \r\n"
    b"0000000000300010: 00000000 "
    b"\r\n> dump 300000 3 8 \r\n"
    b"0000000000300000: 0123456700CDEFAB 0123456789ABCDEF \r\n"
    b"0000000000300010: 0000000000000000 "
    b"\r\n> dump 300000 0 1 \r\nInvalid argument(s)"
    b"\r\n> dump 300000 2 3 \r\nInvalid argument(s)"
    b"\r\n> dump 300000 2 \r\nInsufficient argument(s)"
    b"\r\n> cls \r\n\x01"
    b"> dir \r\nNo filesystem detected"
    b"\r\n> load \r\nNo filesystem detected"
    b"\r\n> exec \r\n"
    b"\r\n> ab\x08 \x08c\x08 \x08\x08 \x08ver \r\n1.0"
    b"\r\n> shutdown \r\n")


def test_a_scripted_session_matches_upstreams_transcript_byte_for_byte():
    assert session(SCRIPT, cores=2) == TRANSCRIPT


@needs_kvm
def test_a_disk_session_matches_upstreams_transcript_byte_for_byte(tmp_path, disk):
    size = os.path.getsize(tmp_path / "hello.app")
    out = session(b"dir\nload\n1\nexec\nload\n9\nload\n3\nloadr\n1\nshutdown\n", [disk])
    assert out == (
        b"\x01[cpu: 1]  [mem: 30 MiB]  [net: N/A]\r\n"
        b"\r\n> dir \r\nBMFS\r\n#       Name            Size\r\n-----------------------------"
        b"\r\n1\thello.app\t%d\r\n2\tnotes.txt\t9" % size +
        b"\r\n> load \r\nEnter file number: 1 "
        b"\r\n> exec \r\nhello from disk\r\n"
        b"\r\n> load \r\nEnter file number: 9 Invalid argument(s)"
        b"\r\n> load \r\nEnter file number: 3 Invalid argument(s)"
        b"\r\n> loadr \r\nEnter file number: 1 Invalid argument(s)"
        b"\r\n> shutdown \r\n")


def test_dir_lists_deleted_records_as_upstreams_does(disk):
    with bmfs.Disk.open(disk) as d:
        d.delete("hello.app")
    out = session(b"dir\n", [disk])
    assert b"-----------------------------\r\n1\t\x01ello.app\t" in out
    assert b"\r\n2\tnotes.txt\t9\r\n> " in out


def test_banner_shows_each_nics_mac():
    out = session(b"", nics=["wire,mac=10:11:12:00:1A:F4", "wire,mac=02:00:00:00:00:0B"])
    assert out == b"\x01[cpu: 1]  [mem: 30 MiB]  [net: 10:11:12:00:1A:F4, 02:00:00:00:00:0B]\r\n\r\n> "


def test_test_command_prints_the_tsc_difference_as_16_hex_digits():
    out = session(b"test\n")
    tail = out.split(b"> test \r\n")[1]
    assert len(tail) == 16 + 4 and tail.endswith(b"\r\n> ")
    int(tail[:16], 16)


@pytest.mark.parametrize("line", [b"peek 7FFFFFFFFFFF 8", b"poke 1FFFFFF 1122", b"dump 1FFFFF0 11 1",
                                  b"peek FFFFFFFFFFFFFFFF 1"])
def test_addresses_outside_memory_are_invalid_arguments_and_change_nothing(line):
    with bm.Machine(cores=1, memory="32M", console="capture", input=line + b"\nver\n", pin=False) as m:
        before = m.memory[0x300000:].copy()
        monitor.run(m)
        out = m.console.output()
        assert (m.memory[0x300000:] == before).all()
    assert out.endswith(b" \r\nInvalid argument(s)\r\n> ver \r\n1.0\r\n> ")


def test_a_line_takes_100_characters_and_ignores_the_rest():
    out = session(b"x" * 150 + b"\n")
    assert out.endswith(b"\r\n> " + b"x" * 100 + b" \r\nUnknown command\r\n> ")


@needs_kvm
def test_init_app_runs_at_boot(tmp_path, disk):
    init = asm(tmp_path, "init.app", PRINT.format(text="init ran"))
    with bmfs.Disk.open(disk) as d:
        d.write("init.app", str(init))
    out = session(b"", [disk])
    assert out == b"\x01[cpu: 1]  [mem: 30 MiB]  [net: N/A]\r\ninit ran\r\n\r\n> "


@needs_kvm
def test_a_crashing_app_is_reported_and_the_monitor_goes_on(tmp_path, disk):
    with bmfs.Disk.open(disk) as d:
        d.write("crash.app", str(asm(tmp_path, "crash.app", "ud2\n")))
    out = session(b"load\n3\nexec\nver\n", [disk])
    assert b"crash.app: the app crashed" in out and out.endswith(b"\r\n> ver \r\n1.0\r\n> ")


def test_baremetal_monitor_command_ends_at_end_of_input(disk):
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "monitor", "--drive", disk, "--cores", "1"],
                          input=b"dir\n", capture_output=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0
    assert b"\r\n1\thello.app\t" in done.stdout
