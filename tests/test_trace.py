"""The call trace (--trace[=FILE], Machine(trace=...)): one whole line per call an app makes,
from every app kind (Python, C, flat binary), with the calling core and the result; nothing
when off.  Real apps, real cores, real files and pipes."""
import importlib
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import pybaremetal as bm
from conftest import until
from pybaremetal import trace
from pybaremetal.apps import binary, c as capps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"(\d+)\.(\d{9}) core (\d+)( callback)? (b_[a-z_]+\(.*?)( error: .*)? <(\d+) ns>")


def parse(text):
    """[(core, call text, error or None)] of a trace; fails on any line that is not whole."""
    calls = []
    assert text == "" or text.endswith("\n"), f"the trace ends mid-line: {text[-80:]!r}"
    for line in text.splitlines():
        match = LINE.fullmatch(line)
        assert match, f"not a whole trace line: {line!r}"
        calls.append((int(match.group(3)), match.group(5), match.group(6)))
    return calls


def per_core(calls, core):
    return [(text, error) for c, text, error in calls if c == core]


def cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "pybaremetal", *args], capture_output=True,
                          cwd=cwd, env=env, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("trace-cache"))


def build_c(tmp_path, cache, body, monkeypatch):
    """A C app built through the cache (gcc, as `baremetal run x.c` does)."""
    monkeypatch.setenv("BAREMETAL_CACHE", cache)
    path = tmp_path / "app.c"
    path.write_text('#include "libBareMetal.h"\n' + body)
    return str(path)


# --- Python apps ------------------------------------------------------------------------------

def test_python_app_calls_are_traced_once_each_with_core_result_and_error(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(range(256)) * 16 * 4)              # 4 sectors
    path = tmp_path / "calls.log"
    with bm.Machine(cores=2, memory="16M", console="capture", input=b"k", pin=False,
                    drives=[str(disk)], nics=["wire"], trace=str(path)) as m:
        address, view = m.alloc(4096)

        def on_core_1():
            bm.b_system(bm.SMP_ID)

        def main():
            bm.b_output("hi\n")
            assert bm.b_input() == ord("k")
            assert bm.b_nvs_read(address, 1, 1, 0) == 1
            with pytest.raises(bm.BareMetalError):
                bm.b_nvs_read(address, 4, 1, 0)              # past the end: an error line
            bm.b_nvs_write(address, 2, 1, 0)
            bm.b_net_tx(b"\xff" * 60)
            assert len(bm.b_net_rx()) == 60
            bm.b_system(bm.DUMP_RAX, 0xAB)                   # its own output is not a call
            bm.b_system(bm.SMP_NUMCORES)
            m.smp.set(on_core_1, 1)
            m.smp.wait()
        m.run(main)
        console = m.console.output()
    assert console.startswith(b"hi\n") and b"00000000000000AB" in console
    calls = parse(path.read_text())
    assert [text for text, _ in per_core(calls, 1)] == ["b_system(SMP_ID) = 1"]
    core0 = per_core(calls, 0)
    texts = [re.sub(r"0x[0-9a-f]{6,}", "ADDR", text) for text, _ in core0]
    assert texts == [
        'b_output("hi\\n", 3)', "b_input() = 107 'k'",
        "b_nvs_read(ADDR, 1, 1, 0) = 1", "b_nvs_read(ADDR, 4, 1, 0) = 0",
        "b_nvs_write(ADDR, 2, 1, 0) = 1", "b_net_tx(ADDR, 60, 0)", "b_net_rx(0) = 60, frame at ADDR",
        "b_system(DUMP_RAX, 0xab) = 0xab", "b_system(SMP_NUMCORES) = 2"]
    errors = [error for _, error in core0]
    assert errors[3] and "past its end" in errors[3]
    assert errors.count(None) == len(errors) - 1
    assert f"0x{address:x}" in core0[2][0]                    # the app's own address
    assert trace.lines(m) == len(calls)


def test_trace_off_writes_nothing_and_a_second_machine_is_not_in_the_first_ones_trace(tmp_path, capfd):
    path = tmp_path / "first.log"
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, trace=str(path)) as traced:
        traced.run(lambda: bm.b_system(bm.SMP_ID))
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as quiet:
        quiet.run(lambda: [bm.b_output("x"), bm.b_system(bm.TIMECOUNTER)])
        assert trace.lines(quiet) == 0
    assert [text for _, text, _ in parse(path.read_text())] == ["b_system(SMP_ID) = 0"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_trace_true_goes_to_stderr_never_to_the_console(capfd):
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, trace=True) as m:
        m.run(lambda: bm.b_output("to the console\n"))
        console = m.console.output()
    out, err = capfd.readouterr()
    assert console == b"to the console\n" and out == ""
    assert [text for _, text, _ in parse(err)] == ['b_output("to the console\\n", 15)']


def test_a_bad_trace_destination_is_one_clear_error(tmp_path):
    with pytest.raises(bm.ArgumentError, match="trace: cannot write"):
        bm.Machine(cores=1, memory="16M", console="capture", trace=str(tmp_path / "no" / "x.log"))
    with pytest.raises(bm.ArgumentError, match="trace: expected"):
        bm.Machine(cores=1, memory="16M", console="capture", trace=1.5)
    done = cli("run", "examples/hello.py", f"--trace={tmp_path / 'no' / 'x.log'}")
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1 and b"trace: cannot write" in done.stderr


def test_cli_trace_flag_alone_goes_to_stderr_and_does_not_take_the_app(tmp_path):
    done = cli("run", "--trace", "examples/hello.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Hello, world!\n"
    assert [text for _, text, _ in parse(done.stderr.decode())] == ['b_output("Hello, world!\\n", 14)']
    untraced = cli("run", "examples/hello.py")
    assert untraced.returncode == 0 and untraced.stderr == b""


# --- C apps -------------------------------------------------------------------------------------

TASKS_C = r"""
#define CALLS 400
static volatile u64 finished;

static void task(void)
{
	u64 id = b_system(SMP_ID, 0, 0);
	char line[32] = "a whole line from core ?\n";
	line[23] = (char)('0' + id);
	for (int i = 0; i < CALLS; i++) {
		b_system(TIMECOUNTER, 0, 0);
		b_output(line, 25);
	}
	__atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
}

int main(void)
{
	u64 cores = b_system(SMP_NUMCORES, 0, 0);
	for (u64 core = 1; core < cores; core++)
		b_system(SMP_SET, (u64)task, core);
	while (__atomic_load_n(&finished, __ATOMIC_SEQ_CST) < cores - 1)
		__builtin_ia32_pause();                     /* no calls: the trace's length is known */
	b_nvs_read((void *)0, 0, 1, 9);                 /* no drive 9: an error line */
	return 7;
}
"""


@pytest.mark.filterwarnings("ignore:Machine\\(cores=4\\)")
def test_c_app_calls_from_several_cores_are_whole_lines_with_their_cores(tmp_path, cache, monkeypatch):
    app = build_c(tmp_path, cache, TASKS_C, monkeypatch)
    path = tmp_path / "calls.log"
    with bm.Machine(cores=4, memory="64M", console="capture", input=False, pin=False,
                    trace=str(path)) as m:
        assert capps.run(m, app, []) == 7
        console = m.console.output()
    calls = parse(path.read_text())                 # every line whole
    assert len(console.splitlines()) == 3 * 400
    core0 = [text for text, _ in per_core(calls, 0)]
    assert core0[0] == "b_system(SMP_NUMCORES) = 4"
    sets = [re.fullmatch(r"b_system\(SMP_SET, (0x[0-9a-f]+), (\d)\) = (0x[0-9a-f]+)", t) for t in core0[1:4]]
    assert [s.group(2) for s in sets] == ["1", "2", "3"]
    assert len({s.group(1) for s in sets} | {s.group(3) for s in sets}) == 1    # the task's address
    assert core0[4:] == ["b_nvs_read(0x0, 0, 1, 9) = 0"]
    assert "no drive 9" in per_core(calls, 0)[4][1]
    for core in (1, 2, 3):
        counts = Counter(text for text, _ in per_core(calls, core))
        assert counts == {f"b_system(SMP_ID) = {core}": 1,
                          f'b_output("a whole line from core {core}\\n", 25)': 400,
                          **{k: v for k, v in counts.items() if k.startswith("b_system(TIMECOUNTER)")}}
        assert sum(v for k, v in counts.items() if k.startswith("b_system(TIMECOUNTER) = ")) == 400
    assert len(calls) == 1 + 3 + 1 + 3 * (1 + 2 * 400) and trace.lines(m) == len(calls)


def test_c_app_under_the_cli_traces_to_a_pipe_in_whole_lines(tmp_path, cache):
    app = tmp_path / "app.c"
    app.write_text('#include "libBareMetal.h"\n' + TASKS_C)
    env = dict(os.environ, BAREMETAL_CACHE=cache)
    done = cli("run", str(app), "--cores", "3", "--no-pin", "--memory", "64M", "--trace", env=env)
    assert done.returncode == 7, done.stderr[-400:]
    lines = done.stderr.decode().splitlines(keepends=True)
    calls = parse("".join(line for line in lines if not line.startswith("baremetal: warning:")))
    assert len(calls) == 1 + 2 + 1 + 2 * (1 + 2 * 400)
    assert Counter(core for core, _, _ in calls) == {0: 4, 1: 801, 2: 801}


def test_c_app_shutdown_is_traced_before_it_ends_the_run(tmp_path, cache, monkeypatch):
    app = build_c(tmp_path, cache, "int main(void) { b_system(SHUTDOWN, 0, 0); return 3; }\n",
                  monkeypatch)
    path = tmp_path / "calls.log"
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, trace=str(path)) as m:
        assert capps.run(m, app, []) is None
        m.run(lambda: bm.b_system(bm.SMP_ID))       # the next call is traced too
    assert [text for _, text, _ in parse(path.read_text())] == [
        "b_system(SHUTDOWN) = 1", "b_system(SMP_ID) = 0"]


# --- flat binaries ------------------------------------------------------------------------------

def binary_backend():
    """The name of a CPU backend that runs flat binaries here, or None."""
    for name in ("kvm", "emu"):
        try:
            backend = importlib.import_module(f"pybaremetal.cpu.{name}")
        except ImportError:
            continue
        if getattr(backend, "available", lambda: False)():
            return name
    return None


BINARY = """BITS 64
DEFAULT REL
ORG 0xFFFF800000000000
b_output equ 0x100018
b_nvs_read equ 0x100030
b_system equ 0x100040

start:
	lea rsi, [message]
	mov rcx, message_end - message
	call [abs b_output]
	mov rcx, 0x12			; SMP_SET: RAX = code, RDX = core
	lea rax, [task]
	mov rdx, 1
	call [abs b_system]
.wait:	pause
	cmp byte [done], 1
	jne .wait
	mov rcx, 0x72			; DELAY 20 ms: one call, however the host slices it
	mov rax, 20000
	call [abs b_system]
	mov rcx, 0x71			; DUMP_RAX: its output is not a call of the app
	mov rax, 0xabcd
	call [abs b_system]
	lea rdi, [buffer]		; b_nvs_read of drive 9: there is none
	xor eax, eax
	mov rcx, 1
	mov rdx, 9
	call [abs b_nvs_read]
	mov eax, 5
	ret

align 16
task:	mov rcx, 0x10			; SMP_ID on core 1
	call [abs b_system]
	mov byte [done], 1
	ret

message: db 'traced', 10
message_end:
done: db 0
align 4096
buffer: times 4096 db 0
"""


def test_flat_binary_calls_are_traced_in_guest_terms_once_each(tmp_path):
    backend = binary_backend()
    if backend is None:
        pytest.skip("no CPU backend runs flat binaries on this host (no usable /dev/kvm, no emu)")
    assert shutil.which("nasm"), "nasm is installed by `make` (Makefile DEBIAN_PACKAGES)"
    source, image = tmp_path / "app.asm", tmp_path / "app.app"
    source.write_text(BINARY)
    subprocess.run(["nasm", "-f", "bin", str(source), "-o", str(image)], check=True)
    path = tmp_path / "calls.log"
    with bm.Machine(cores=2, memory="16M", console="capture", input=False, pin=False,
                    trace=str(path)) as m:
        assert binary.run(m, str(image), []) == 5
        console = m.console.output()
    assert console == b"traced\n000000000000ABCD"
    calls = parse(path.read_text())
    assert per_core(calls, 1) == [("b_system(SMP_ID) = 1", None)]
    core0 = per_core(calls, 0)
    texts = [text for text, _ in core0]
    task = int(re.fullmatch(r"b_system\(SMP_SET, 0x([0-9a-f]+), 1\) = 0x\1", texts[1]).group(1), 16)
    assert task >> 47 == 0x1FFFF and task % 16 == 0           # the guest's own address
    assert texts[0] == 'b_output("traced\\n", 7)'
    assert texts[2:4] == ["b_system(DELAY, 20000) = 20000", "b_system(DUMP_RAX, 0xabcd) = 0xabcd"]
    assert re.fullmatch(r"b_nvs_read\(0xffff8000000[0-9a-f]{5}, 0, 1, 9\) = 0", texts[4])
    assert "no drive 9" in core0[4][1]
    assert len(calls) == 6


def test_python_callback_is_one_b_system_line_and_its_calls_say_callback(tmp_path):
    path = tmp_path / "calls.log"
    ticked = []
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, trace=str(path)) as m:
        def main():
            bm.b_system(bm.CALLBACK_TIMER, lambda: ticked.append(bm.b_system(bm.SMP_ID)))
            until(lambda: ticked, "a timer tick")
            bm.b_system(bm.CALLBACK_TIMER, 0)
        m.run(main)
    calls = parse(path.read_text())
    main_lines = [text for core, text, _ in calls if not text.startswith("b_system(SMP_ID)")]
    assert len(main_lines) == 2
    assert re.fullmatch(r"b_system\(CALLBACK_TIMER, (0x[0-9a-f]+)\) = \1", main_lines[0])
    assert main_lines[1] == "b_system(CALLBACK_TIMER, 0x0) = 0x0"
    ticks = [line for line in path.read_text().splitlines() if "SMP_ID" in line]
    assert len(ticks) == len(ticked) >= 1
    assert all(" core 0 callback b_system(SMP_ID) = 0 " in line for line in ticks)
