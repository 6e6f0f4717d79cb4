"""The Monitor, driven through its console with a real BMFS disk image and real KVM binaries."""
import os
import subprocess
import sys

import pytest

import pybaremetal as bm
from pybaremetal import bmfs, monitor
from pybaremetal.cpu import emu, kvm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def session(script, drives=(), cores=1):
    with bm.Machine(cores=cores, memory="32M", console="capture", input=script.encode(),
                    drives=list(drives), pin=False) as m:
        monitor.run(m)
        return m.console.output().decode()


needs_kvm = pytest.mark.skipif(not (kvm.available() or emu.available()), reason="no CPU backend for binaries")


@needs_kvm
def test_dir_load_exec_runs_an_app_from_the_disk(disk):
    out = session("dir\nload\n1\nexec\nshutdown\n", [disk])
    assert " 1 hello.app" in out and " 2 notes.txt" in out
    assert "Enter file number: 1\nLoaded hello.app (" in out
    assert "> exec\nhello from disk\n> shutdown\n" in out


def test_peek_poke_dump_use_the_apps_view_of_memory():
    out = session("peek 5012 2\npoke 400000 1234\npeek 400000 2\npeek 400000 1\ndump 400000 2 1\n", cores=3)
    assert "> peek 5012 2\n0x0003\n" in out                   # InfoMap: cores active
    assert "> peek 400000 2\n0x1234\n> peek 400000 1\n0x34\n" in out
    assert "> dump 400000 2 1\n0x0000000000400000: 34 12\n" in out


def test_high_addresses_are_app_memory_at_2mib():
    out = session("poke FFFF800000000010 AB\npeek 200010 1\n")
    assert "> peek 200010 1\n0xAB\n" in out


def test_help_ver_and_cls():
    out = session("help\nver\ncls\n")
    assert "dump ADDR COUNT SIZE" in out and out.count("BareMetal Monitor (pybaremetal") == 2
    assert "\x1b[2J" in out


@pytest.mark.parametrize("line, message", [
    ("bogus", "Unknown command: bogus"),
    ("peek 1", "Usage: peek ADDR SIZE"),
    ("peek 1 3", "SIZE must be 1, 2, 4 or 8"),
    ("peek zz 1", "Numbers are hex"),
    ("peek 7FFFFFFFFFFF 8", "is outside memory"),
    ("poke 1FFFFFF 1122", "is outside memory"),
    ("dump 0 0 1", "COUNT must be positive"),
    ("exec", "No app loaded"),
    ("dir", "no disk"),
])
def test_bad_commands_get_clear_messages_and_the_monitor_goes_on(line, message):
    out = session(line + "\nver\n")
    assert message in out
    assert out.rstrip().endswith("> ver\nBareMetal Monitor (pybaremetal " + bm.__version__ + ")\n>")


def test_poke_outside_memory_changes_nothing():
    with bm.Machine(cores=1, memory="32M", console="capture", input=b"poke 1FFFFFF 1122\n") as m:
        before = m.memory.copy()
        monitor.run(m)
        assert (m.memory[0x200000:] == before[0x200000:]).all()


@needs_kvm
def test_load_refuses_a_bad_file_number(disk):
    out = session("load\n7\nload\nx\nexec\n", [disk])
    assert out.count("Invalid file number") == 2 and "No app loaded" in out


def test_backspace_edits_the_line():
    out = session("verr\x7f\n")
    assert "\b \b" in out and out.count("BareMetal Monitor") == 2


@needs_kvm
def test_init_app_runs_at_boot(tmp_path, disk):
    init = asm(tmp_path, "init.app", PRINT.format(text="init ran"))
    with bmfs.Disk.open(disk) as d:
        d.write("init.app", str(init))
    out = session("", [disk])
    assert out.startswith("BareMetal Monitor (pybaremetal " + bm.__version__ + ")\ninit ran\n> ")


@needs_kvm
def test_a_crashing_app_reports_and_returns_to_the_prompt(tmp_path, disk):
    with bmfs.Disk.open(disk) as d:
        d.write("crash.app", str(asm(tmp_path, "crash.app", "ud2\n")))
    out = session("load\n3\nexec\nver\n", [disk])
    assert "crash.app: the app crashed" in out and out.count("BareMetal Monitor") == 2


def test_baremetal_monitor_command_ends_at_end_of_input(disk):
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "monitor", "--drive", disk, "--cores", "1"],
                          input=b"dir\n", capture_output=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0
    assert b" 1 hello.app" in done.stdout
