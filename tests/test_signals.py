"""Stop signals, --timeout and the terminal (issue 12, defects 2, 5, 7).

Every run here is a real `baremetal run` process on a real pseudo-terminal (its stdin, so the
machine puts it in raw mode), stopped by a real signal while it runs native code; each asserts
the exit status, that a durable drive holds what the app wrote, and that the terminal has its
state back.  No test asserts on time: a hang shows as the generous timeout of communicate().
"""
import os
import select
import signal
import subprocess
import sys
import termios
import textwrap
import time

import pytest

import pybaremetal as bm
from pybaremetal.cpu import kvm

SECTOR = 4096
MARK = b"\x5e" * SECTOR
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]

PY_DELAY = textwrap.dedent("""
    import pybaremetal as bm

    def main():
        assert bm.b_nvs_write(b"\\x5e" * 4096, 3, 1) == 1
        print("ready", flush=True)
        bm.b_system(bm.DELAY, 2**64 - 1)       # clamped, not 0: ends only when the run is stopped
        return 7
""")

C_APP = textwrap.dedent("""
    #include <stdio.h>
    #include <string.h>
    #include "libBareMetal.h"

    static char sector[4096] __attribute__((aligned(4096)));
    static volatile int forever = 1;
    static u16 lock;

    void spin(void) { while (forever) ; }
    void sleep_long(void) { b_system(DELAY, 1ull << 50, 0); }

    int main(int argc, char **argv)
    {
        memset(sector, 0x5e, sizeof sector);
        if (b_nvs_write(sector, 3, 1, 0) != 1)
            return 3;
        const char *mode = argc > 1 ? argv[1] : "main";
        if (strcmp(mode, "task") == 0 || strcmp(mode, "task_delay") == 0) {
            b_system(SMP_SET, mode[4] ? (u64)sleep_long : (u64)spin, 1);  /* core 1 busy in a task */
            printf("ready\\n");
            fflush(stdout);
            b_smp_wait();                        /* core 0 waits for it */
        } else if (strcmp(mode, "delay") == 0) {
            printf("ready\\n");
            fflush(stdout);
            b_system(DELAY, 1ull << 50, 0);      /* core 0 sleeps in main */
        } else if (strcmp(mode, "lock") == 0) {
            b_system(SMP_LOCK, (u64)&lock, 0);
            printf("ready\\n");
            fflush(stdout);
            b_system(SMP_LOCK, (u64)&lock, 0);   /* never free: core 0 spins for it */
        } else if (strcmp(mode, "input") == 0 || strcmp(mode, "dequeue") == 0) {
            u64 arg;
            printf("ready\\n");
            fflush(stdout);
            while (mode[0] == 'i' ? b_input() == 0 : b_smp_dequeue(&arg) == 0)
                ;                                /* core 0 polls for a key / a task */
        } else {
            printf("ready\\n");
            fflush(stdout);
            spin();                              /* core 0 spins in main */
        }
        return 7;
    }
""")

FLAT_SPIN = textwrap.dedent("""
    BITS 64
    DEFAULT REL
    ORG 0xFFFF800000000000
        mov rax, 3                  ; b_nvs_write: RAX start, RCX count, RDX drive, RSI memory
        mov rcx, 1
        xor edx, edx
        lea rsi, [sector]
        call [abs 0x100038]
        lea rsi, [ready]            ; b_output: RSI, RCX
        mov rcx, 6
        call [abs 0x100018]
    spin:
        jmp spin                    ; jmp $
    ready: db 'ready', 10
    align 4096
    sector: times 4096 db 0x5e
""")


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """The apps, written once: (kind -> (path, extra baremetal args, app args))."""
    work = tmp_path_factory.mktemp("signals")
    (work / "delay.py").write_text(PY_DELAY)
    (work / "spin.c").write_text(C_APP)
    (work / "spin.asm").write_text(FLAT_SPIN)
    from pybaremetal.apps import c
    c.build([str(work / "spin.c")], str(work / "spin.so"))    # built once: no compile in a run
    return work


def _image(directory):
    path = directory / f"disk-{time.monotonic_ns()}.img"
    path.write_bytes(b"\0" * 8 * SECTOR)
    return path


def run_on_pty(command, env=None, signum=None, ready=b"ready\n", timeout=60):
    """Run `command` with a pseudo-terminal as stdin; wait for `ready` on stdout, check the
    terminal went raw, send `signum` (if any); returns (status, stderr, before, during, after)
    where the last three are the terminal's attributes."""
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        child = subprocess.Popen(command, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env)
        try:
            seen = b""
            while not seen.endswith(ready):
                readable, _, _ = select.select([child.stdout], [], [], timeout)
                chunk = os.read(child.stdout.fileno(), 4096) if readable else b""
                if not chunk:
                    child.kill()
                    raise AssertionError(f"no {ready!r} from the app; stdout {seen!r}, stderr "
                                         f"{child.stderr.read().decode(errors='replace')}")
                seen += chunk
            during = termios.tcgetattr(slave)
            if signum is not None:
                child.send_signal(signum)
            _, err = child.communicate(timeout=timeout)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        after = termios.tcgetattr(slave)
        return child.returncode, err.decode(errors="replace"), before, during, after
    finally:
        os.close(master)
        os.close(slave)


def baremetal(app, drive, *extra, app_args=()):
    return [sys.executable, "-m", "pybaremetal", "run", str(app), "--memory", "16M",
            "--drive", f"{drive},durable", *extra, "--", *app_args]


def env_for(tmp):
    return dict(os.environ, BAREMETAL_CACHE=str(tmp / "cache"))


CASES = {
    "python_app_in_delay": ("delay.py", ("--cores", "1"), ()),
    "c_main_spinning": ("spin.so", ("--cores", "1", "--screen", "none"), ("main",)),
    "c_task_spinning_on_core_1": ("spin.so", ("--cores", "2", "--no-pin", "--screen", "none"), ("task",)),
    "flat_binary_spinning": ("spin.asm", ("--cores", "1"), ()),
}


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("signum", SIGNALS, ids=[s.name for s in SIGNALS])
def test_stop_signal_ends_native_code_flushes_drives_and_restores_the_terminal(apps, kind, signum):
    name, extra, app_args = CASES[kind]
    if name.endswith(".asm") and not kvm.available():
        pytest.skip("flat binaries need /dev/kvm here until the emulated CPU lands")
    drive = _image(apps)
    status, err, before, during, after = run_on_pty(
        baremetal(apps / name, drive, *extra, app_args=app_args), env=env_for(apps), signum=signum)
    assert during[3] & termios.ECHO == 0, "the run did not put the terminal in raw mode"
    assert status == 128 + signum, err
    assert "Traceback" not in err, err
    assert after == before
    assert drive.read_bytes()[3 * SECTOR:4 * SECTOR] == MARK


COOPERATIVE = {
    "python_app_in_delay": ("delay.py", ("--cores", "1"), ()),
    "c_main_in_delay": ("spin.so", ("--cores", "1", "--screen", "none"), ("delay",)),
    "c_main_waiting_for_a_lock": ("spin.so", ("--cores", "1", "--screen", "none"), ("lock",)),
    "c_main_in_wait_task_in_delay": ("spin.so", ("--cores", "2", "--no-pin", "--screen", "none"),
                                     ("task_delay",)),
    "c_main_polling_b_input": ("spin.so", ("--cores", "1", "--screen", "none"), ("input",)),
    "c_main_polling_the_queue": ("spin.so", ("--cores", "1", "--screen", "none"), ("dequeue",)),
}


@pytest.mark.parametrize("kind", list(COOPERATIVE))
def test_stop_signal_ends_code_waiting_in_the_runtime_without_the_watchdog(apps, kind):
    """With the watchdog's grace made long (60 s), the run still ends at once on its own: DELAY,
    SMP_LOCK and b_smp_wait give up when the machine is stopping and a C main unwinds."""
    name, extra, app_args = COOPERATIVE[kind]
    drive = _image(apps)
    env = dict(env_for(apps), BAREMETAL_STOP_GRACE_MS="60000")
    status, err, before, _, after = run_on_pty(
        baremetal(apps / name, drive, *extra, app_args=app_args), env=env, signum=signal.SIGTERM,
        timeout=50)
    assert status == 143, err
    assert "did not stop" not in err and "Traceback" not in err, err
    assert after == before
    assert drive.read_bytes()[3 * SECTOR:4 * SECTOR] == MARK


def test_watchdog_reports_what_it_did(apps):
    drive = _image(apps)
    status, err, _, _, _ = run_on_pty(
        baremetal(apps / "spin.so", drive, "--cores", "1", "--screen", "none", app_args=("main",)),
        env=env_for(apps), signum=signal.SIGTERM)
    assert status == 143
    assert err.strip().splitlines()[-1] == ("baremetal: SIGTERM: the app did not stop within 50 ms of "
                                            "being asked; drives flushed, exit status 143")


@pytest.mark.parametrize("kind", ["c_main_spinning", "flat_binary_spinning"])
def test_timeout_ends_spinning_native_code_with_124(apps, kind):
    name, extra, app_args = CASES[kind]
    if name.endswith(".asm") and not kvm.available():
        pytest.skip("flat binaries need /dev/kvm here until the emulated CPU lands")
    drive = _image(apps)
    status, err, before, _, after = run_on_pty(
        baremetal(apps / name, drive, *extra, "--timeout", "1", app_args=app_args), env=env_for(apps))
    assert status == 124, err
    assert "timeout" in err
    assert after == before
    assert drive.read_bytes()[3 * SECTOR:4 * SECTOR] == MARK


def test_delay_of_2_64_minus_1_waits_instead_of_returning_at_once(apps):
    """DELAY(2**64 - 1) used to overflow and return at once (the app would exit 7); clamped,
    it waits until --timeout ends the run (124): Python's path, as the DELAY ends early."""
    drive = _image(apps)
    status, err, before, _, after = run_on_pty(
        baremetal(apps / "delay.py", drive, "--cores", "1", "--timeout", "1"), env=env_for(apps))
    assert status == 124, err
    assert "Traceback" not in err, err
    assert after == before


def test_bad_timeout_is_one_line_exit_2(apps, tmp_path):
    from pybaremetal import signals
    for value in (0, -1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(bm.ArgumentError, match="timeout"):
            signals.check_timeout(value)
    assert signals.check_timeout(2) == 2.0 and signals.check_timeout(None) is None
    child = subprocess.run([sys.executable, "-m", "pybaremetal", "run", str(apps / "delay.py"),
                            "--timeout", "nan"], capture_output=True, text=True, timeout=60)
    assert child.returncode == 2, child.stderr
    assert child.stderr.count("\n") == 1 and "timeout" in child.stderr, child.stderr


# --- the terminal when the process ends without running our Python -------------------------------

ENDINGS = textwrap.dedent("""
    import os, sys, time
    import pybaremetal as bm
    from pybaremetal._native import ffi

    def main():
        print("ready", flush=True)
        while bm.b_input() == 0:                     # the test has seen the terminal raw: go
            time.sleep(0.01)
        how = sys.argv[1]
        if how == "os_exit":
            os._exit(5)
        if how == "abort":
            os.abort()
        if how == "callback_crash":                  # a C callback that faults, on the service thread
            crash = ffi.cast("void (*)(void)", 0x10)
            bm.b_system(bm.CALLBACK_TIMER, int(ffi.cast("uintptr_t", crash)))
            bm.b_system(bm.DELAY, 10**7)
        if how == "sigkill":
            os.kill(os.getpid(), 9)
        return 0
""")


def _wait_restored(slave_attrs, slave, limit=20.0):
    """The guard restores the terminal shortly after the process is gone: poll (no timing
    asserted: the limit only bounds a failure)."""
    end = time.monotonic() + limit
    while termios.tcgetattr(slave) != slave_attrs and time.monotonic() < end:
        time.sleep(0.02)
    return termios.tcgetattr(slave)


@pytest.mark.parametrize("how", ["os_exit", "abort", "callback_crash", "sigkill"])
def test_terminal_is_restored_when_the_process_ends_abruptly(tmp_path, how):
    app = tmp_path / "endings.py"
    app.write_text(ENDINGS)
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        child = subprocess.Popen([sys.executable, "-m", "pybaremetal", "run", str(app), "--cores", "1",
                                  "--memory", "8M", "--", how], stdin=slave, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        try:
            assert child.stdout.readline() == b"ready\n"
            assert termios.tcgetattr(slave)[3] & termios.ECHO == 0
            os.write(master, b"g")
            child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode != 0
        assert _wait_restored(before, slave) == before
    finally:
        os.close(master)
        os.close(slave)


# --- SMP_LOCK / SMP_UNLOCK addresses (defect 5) --------------------------------------------------

def test_python_smp_lock_outside_the_machine_raises_and_touches_nothing(machine):
    outside = bytearray(4)
    address = int(bm._native.ffi.cast("uintptr_t", bm._native.ffi.from_buffer(outside)))
    for code in (bm.SMP_LOCK, bm.SMP_UNLOCK):
        for bad in (0, 8, address, machine.base - 2, machine.base + machine.memory_size - 1):
            with pytest.raises(bm.AddressError):
                bm.b_system(code, bad)
    assert outside == bytearray(4)
    with pytest.raises(bm.ArgumentError):
        bm.b_system(bm.SMP_LOCK, machine.base + 0x300001)
    with pytest.raises(bm.AddressError):
        bm.b_system(bm.SMP_LOCK, bm._native.ffi.from_buffer(outside))       # a pointer: checked too
    word = machine.base + 0x300000
    assert bm.b_system(bm.SMP_LOCK, word) == 1 and machine.memory[0x300000] == 1
    assert bm.b_system(bm.SMP_UNLOCK, word) == 1 and machine.memory[0x300000] == 0


def test_c_smp_lock_on_unmapped_memory_returns_0_without_a_crash(machine):
    lib = bm._native.lib
    assert lib.bm_smp_lock(8) == 0 and lib.bm_error_code() == 3          # BM_ERR_RANGE
    assert lib.bm_smp_unlock(0xdead0000) == 0 and lib.bm_error_code() == 3
    private = bm._native.ffi.new("u16[8]")                              # any memory of the process
    address = int(bm._native.ffi.cast("uintptr_t", private))
    assert lib.bm_smp_lock(address) == 1 and private[0] == 1
    assert lib.bm_smp_unlock(address) == 1 and private[0] == 0


# --- waits in the runtime end when the machine stops (defect 7) ----------------------------------

def _machine_shut_down_by_core_1(m):
    """SHUTDOWN from a task on core 1 (the machine's state; core 0 carries on)."""
    m.smp.set(lambda: bm.b_system(bm.SHUTDOWN), 1)


def test_delay_on_core_0_ends_when_another_core_shuts_the_machine_down():
    with bm.Machine(cores=2, memory="16M", console="capture", input=False, pin=False) as m:
        def main():
            _machine_shut_down_by_core_1(m)
            bm.b_system(bm.DELAY, 10**12)          # 11.6 days unless the stop ends it
            return 5
        assert m.run(main) == 5


def test_lock_wait_on_core_0_gives_up_when_another_core_shuts_the_machine_down():
    with bm.Machine(cores=2, memory="16M", console="capture", input=False, pin=False) as m:
        lock = bm.Lock()

        def main():
            lock.acquire()
            _machine_shut_down_by_core_1(m)
            with pytest.raises(bm.StateError, match="stopped while waiting"):
                lock.acquire()                     # held by core 0 itself: only the stop ends it
            return 5
        assert m.run(main) == 5
