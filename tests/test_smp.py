"""Cores, slots, locks and the work queue (native/smp.c, pybaremetal/smp.py)."""
import os
import resource
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import pybaremetal as bm
from pybaremetal._native import ffi, lib

from conftest import errors_on_another_thread, until
from smp_helpers import Helpers


@pytest.fixture(scope="session")
def helpers_lib(tmp_path_factory):
    return Helpers(str(tmp_path_factory.mktemp("smp")))


@pytest.fixture
def machine():
    with bm.Machine(cores=2, memory="16M", console="capture") as m:
        yield m


@pytest.fixture
def helpers(helpers_lib, machine):
    return helpers_lib.reset(machine)


# --- cores ----------------------------------------------------------------------------------

def test_each_core_reports_its_own_id_and_machine(machine):
    seen = {}

    def who():
        seen[bm.b_system(bm.SMP_ID)] = (bm.current_machine(), bm.b_system(bm.SMP_NUMCORES))
    machine.smp.set(who, 1)
    until(lambda: not machine.smp.busy(), "core 1 to finish")
    assert bm.b_system(bm.SMP_ID) == 0
    assert seen == {1: (machine, 2)}


def test_c_tasks_run_on_every_core(machine, helpers):
    for i in range(2000):
        machine.smp.enqueue(helpers.addr("record_id"), i % 256, block=True)
    machine.smp.wait()
    assert set(helpers.lib.ids[0:256]) <= {0, 1}
    helpers.lib.ids[0] = 7
    machine.smp.set(helpers.addr("record_id"), 1)      # slot code gets arg 0: writes ids[0]
    until(lambda: not machine.smp.busy(), "core 1 to finish")
    assert helpers.lib.ids[0] == 1


def test_smp_id_from_a_thread_that_is_not_a_core_raises(machine):
    errors = errors_on_another_thread(lambda: bm.b_system(bm.SMP_ID), bm.NoMachineError)
    assert len(errors) == 1
    assert lib.b_system(bm.SMP_ID, 0, 0) == 0               # this thread is core 0


def test_cores_are_pinned_to_their_own_cpus_and_core_0_is_restored_at_halt():
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    with bm.Machine(cores=2, memory="8M", console="capture") as m:
        assert os.sched_getaffinity(0) == {cpus[0]}
        assert m.smp.cpu_of(0) == cpus[0]
        assert m.smp.cpu_of(1) == cpus[1 % len(cpus)]
        tid = []
        m.smp.set(lambda: tid.append(threading.get_native_id()), 1)
        until(lambda: tid, "core 1's task")
        assert os.sched_getaffinity(tid[0]) == {cpus[1 % len(cpus)]}
    assert os.sched_getaffinity(0) == before


def test_pin_false_leaves_affinity_alone():
    before = os.sched_getaffinity(0)
    with bm.Machine(cores=2, memory="8M", console="capture", pin=False) as m:
        assert os.sched_getaffinity(0) == before
        assert m.smp.cpu_of(0) is None and m.smp.cpu_of(1) is None


def test_more_cores_than_cpus_warns_and_still_works():
    cores = len(os.sched_getaffinity(0)) + 2
    with pytest.warns(RuntimeWarning, match="share CPUs"):
        m = bm.Machine(cores=cores, memory="8M", console="capture")
    with m:
        ids = set()
        for core in range(1, cores):
            m.smp.set(lambda: ids.add(bm.b_system(bm.SMP_ID)), core)
        until(lambda: not m.smp.busy(), "every core to finish")
        assert ids == set(range(1, cores))


def test_an_idle_booted_machine_uses_almost_no_cpu():
    with bm.Machine(cores=2, memory="8M", console="capture") as m:
        m.smp.enqueue(lambda arg: None)
        m.smp.wait()
        time.sleep(0.05)                              # past the cores' polling budget
        start = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.0)
        end = resource.getrusage(resource.RUSAGE_SELF)
    used = (end.ru_utime - start.ru_utime) + (end.ru_stime - start.ru_stime)
    assert used < 0.05, f"an idle 2-core machine used {used:.3f} s of CPU in 1 s"


def test_two_machines_in_one_process_keep_their_own_cores():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)        # 5 cores may share the CPUs
        a, b = bm.Machine(cores=2, memory="8M", console="capture"), bm.Machine(cores=3, memory="8M", console="capture")
    with a, b:
        seen = []
        for m in (a, b):
            for i in range(20):
                m.smp.enqueue(lambda i, m=m: seen.append((m, bm.current_machine(),
                                                          bm.b_system(bm.SMP_NUMCORES))), i)
        a.smp.wait()
        b.smp.wait()
        assert len(seen) == 40
        assert all(want is got for want, got, _ in seen)
        assert {n for m, _, n in seen if m is a} == {2} and {n for m, _, n in seen if m is b} == {3}


# --- slots ----------------------------------------------------------------------------------

def test_smp_set_refuses_a_core_that_does_not_exist(machine, helpers):
    with pytest.raises(bm.ArgumentError, match="no core 2"):
        bm.b_system(bm.SMP_SET, helpers.addr("noop"), 2)
    assert lib.b_system(bm.SMP_SET, helpers.addr("noop"), 2) == 0


def test_smp_set_refuses_an_unaligned_address(machine, helpers):
    with pytest.raises(bm.ArgumentError, match="16-byte aligned"):
        bm.b_system(bm.SMP_SET, helpers.addr("noop") + 4, 1)
    assert lib.b_system(bm.SMP_SET, helpers.addr("noop") + 8, 1) == 0
    assert not machine.smp.busy()


def test_smp_set_refuses_a_core_that_has_work_and_smp_get_shows_it(machine, helpers):
    probe = helpers.addr("probe")
    assert bm.b_system(bm.SMP_SET, probe, 1) == probe
    until(lambda: helpers.lib.probe_started, "the probe to start")
    assert machine.smp.busy() and bm.b_system(bm.SMP_BUSY) == 1
    with pytest.raises(bm.StateError, match="already has work"):
        bm.b_system(bm.SMP_SET, helpers.addr("noop"), 1)
    assert lib.b_system(bm.SMP_SET, helpers.addr("noop"), 1) == 0
    table = machine.memory[bm.SMP_TABLE:bm.SMP_TABLE + 16].view("<u8")
    assert int(table[1]) == probe | 0b11 and int(table[0]) == 0b01
    helpers.lib.probe_release = 1
    until(lambda: not machine.smp.busy(), "the probe to finish")
    assert helpers.lib.probe_slot == probe | 0b11      # SMP_GET on core 1 while it ran
    assert helpers.lib.probe_id == 1
    assert int(table[1]) == 0b01 and bm.b_system(bm.SMP_GET) == 0b01
    assert bm.b_system(bm.SMP_SET, helpers.addr("noop"), 1) == helpers.addr("noop")


def test_smp_busy_ignores_the_caller(machine):
    started, release = threading.Event(), threading.Event()
    seen_by_core_1 = []

    def hold():
        started.set()
        seen_by_core_1.append(bm.b_system(bm.SMP_BUSY))    # core 0 idle, core 1 is the caller
        release.wait(20)
    assert not machine.smp.busy() and bm.b_system(bm.SMP_BUSY) == 0
    machine.smp.set(hold, 1)
    started.wait(20)
    assert machine.smp.busy() and bm.b_system(bm.SMP_BUSY) == 1
    release.set()
    until(lambda: not machine.smp.busy(), "core 1 to finish")
    assert seen_by_core_1 == [0]


def test_python_slot_tasks_run_with_no_argument(machine):
    got = []
    machine.smp.set(lambda: got.append(bm.b_system(bm.SMP_ID)), 1)
    until(lambda: got, "the slot task")
    assert got == [1]
    with pytest.raises(bm.ArgumentError, match="machine.smp.set"):
        bm.b_system(bm.SMP_SET, lambda: None, 1)


# --- locks --------------------------------------------------------------------------------------

def test_smp_lock_keeps_a_counter_exact_under_contention(machine, helpers):
    for _ in range(4):
        machine.smp.enqueue(helpers.addr("count_locked"), 250_000)
    machine.smp.wait()
    assert helpers.lib.counter == 1_000_000
    assert helpers.lib.lock_word == 0


def test_python_lock_over_flat_memory_excludes_other_cores(machine):
    address, view = machine.alloc(4096)
    lock = bm.Lock(address + 64)
    counter = view[128:136].view("<u8")
    inside = []

    def work(n):
        for _ in range(n):
            with lock:
                inside.append(1)
                assert len(inside) == 1
                counter[0] += 1
                inside.pop()
    for _ in range(8):
        machine.smp.enqueue(work, 500)
    machine.smp.wait()
    assert counter[0] == 4000 and not lock.locked() and not machine.faults
    assert bm.b_system(bm.SMP_LOCK, address + 64) == 1 and lock.locked()
    bm.b_system(bm.SMP_UNLOCK, address + 64)
    assert not lock.locked()
    with pytest.raises(bm.AddressError):
        bm.Lock(address + machine.memory_size)


def test_a_private_lock_works_without_a_machine():
    lock = bm.Lock()
    assert lock.acquire() and lock.locked()
    lock.release()
    assert not lock.locked() and lock.address % 64 == 0


# --- the queue ----------------------------------------------------------------------------------

def test_queue_is_fifo_for_each_producer():
    with bm.Machine(cores=1, memory="8M", console="capture", queue_size=1 << 16) as m:
        def producer(p):
            for i in range(5000):
                m.smp.enqueue(1 << 20, p << 32 | i, block=True)      # never run: we take them
        threads = [threading.Thread(target=producer, args=(p,)) for p in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        arg = ffi.new("u64 *")
        taken = []
        while lib.b_smp_dequeue(arg):
            taken.append(arg[0])
        assert len(taken) == 20000
        for p in range(4):
            mine = [a & 0xFFFFFFFF for a in taken if a >> 32 == p]
            assert mine == list(range(5000))


def test_a_full_queue_refuses_and_an_empty_one_gives_nothing():
    with bm.Machine(cores=1, memory="8M", console="capture", queue_size=8) as m:
        arg = ffi.new("u64 *")
        assert lib.b_smp_dequeue(arg) == 0
        for i in range(8):
            m.smp.enqueue(0x1000, i)
        assert m.smp.queued == 8
        with pytest.raises(bm.QueueFull, match="full"):
            m.smp.enqueue(0x1000, 8)
        assert lib.b_smp_enqueue(ffi.cast("void *", 0x1000), 8) == 0
        assert lib.b_smp_dequeue(arg) == 0x1000 and arg[0] == 0
        assert lib.b_smp_enqueue(ffi.cast("void *", 0x1000), 9) == 1
        rest = []
        while lib.b_smp_dequeue(arg):
            rest.append(arg[0])
        assert rest == [1, 2, 3, 4, 5, 6, 7, 9]


def test_queue_size_must_be_a_power_of_two():
    with pytest.raises(bm.ArgumentError, match="power of two"):
        bm.Machine(cores=1, memory="8M", console="capture", queue_size=1000)


def test_no_task_is_lost_or_run_twice_under_many_producers(machine, helpers):
    per = 40_000
    # producers: 2 Python threads, and C tasks that enqueue from the cores themselves
    def python_producer(base):
        mark = helpers.addr("mark")
        for i in range(per):
            machine.smp.enqueue(mark, base + i, block=True)
    threads = [threading.Thread(target=python_producer, args=(p * per,)) for p in range(2)]
    for t in threads:
        t.start()
    for p in range(2, 6):
        machine.smp.enqueue(helpers.addr("produce"), (p * per) << 32 | per, block=True)
    while any(t.is_alive() for t in threads):
        machine.smp.wait()                 # core 0 consumes too, or producers wait for room
    for t in threads:
        t.join()
    machine.smp.wait()
    seen = helpers.seen[:6 * per]
    assert seen.min() == 1 and seen.max() == 1
    assert helpers.seen[6 * per:].max() == 0


def test_wait_returns_only_when_tasks_that_add_tasks_are_done(machine, helpers):
    machine.smp.enqueue(helpers.addr("chain"), 3000)
    machine.smp.wait()
    assert (helpers.seen[:3001] == 1).all()
    assert not machine.smp.busy() and machine.smp.queued == 0


def test_wait_waits_for_a_long_task_on_another_core(machine):
    done = []

    def long_task(arg):
        time.sleep(0.3)
        done.append(arg)
    machine.smp.set(lambda: long_task("slot"), 1)
    machine.smp.wait()
    assert done == ["slot"]


def test_a_one_core_machine_runs_queued_tasks_in_wait():
    with bm.Machine(cores=1, memory="8M", console="capture") as m:
        got = []
        for i in range(100):
            m.smp.enqueue(got.append, i)
        assert got == [] and m.smp.queued == 100
        m.smp.wait()
        assert got == list(range(100))


def test_python_tasks_get_their_argument_and_may_call_the_machine(machine):
    results = {}

    def task(arg):
        results[arg["n"]] = bm.b_system(bm.SMP_ID)
        bm.b_output(f"task {arg['n']}\n")
    for n in range(50):
        machine.smp.enqueue(task, {"n": n})
    machine.smp.wait()
    assert sorted(results) == list(range(50)) and set(results.values()) <= {0, 1}
    assert not machine.faults
    assert sorted(machine.console.output().decode().splitlines()) == sorted(f"task {n}" for n in range(50))


def test_numba_cfunc_tasks_run_on_the_cores(machine):
    numba = pytest.importorskip("numba")
    from numba import types

    @numba.cfunc(types.void(types.CPointer(types.uint64)))
    def square(p):
        a = numba.carray(p, 2)
        a[1] = a[0] * a[0]
    address, view = machine.alloc(4096)
    cells = view[:8 * 200].view("<u8").reshape(100, 2)
    cells[:, 0] = np.arange(100)
    for i in range(100):
        machine.smp.enqueue(square, address + 16 * i)
    machine.smp.wait()
    assert (cells[:, 1] == np.arange(100) ** 2).all()


def test_bad_tasks_are_refused(machine):
    with pytest.raises(bm.ArgumentError):
        machine.smp.enqueue("not a task")
    with pytest.raises(bm.ArgumentError):
        machine.smp.enqueue(0)
    with pytest.raises(bm.ArgumentError):
        machine.smp.enqueue(0x1000, -1)
    halted = bm.Machine(cores=1, memory="8M", console="capture")
    with pytest.raises(bm.StateError):
        halted.smp.enqueue(lambda a: None)


# --- faults -------------------------------------------------------------------------------------

def test_an_exception_in_a_python_task_is_recorded_and_the_core_goes_on(machine, capfd):
    def bad(arg):
        raise ValueError(f"bad task {arg}")
    machine.smp.set(lambda: bad("in a slot"), 1)
    until(lambda: not machine.smp.busy(), "the slot task")
    machine.smp.enqueue(bad, 7)
    machine.smp.wait()
    faults = machine.faults
    assert [f.kind for f in faults] == ["exception", "exception"]
    assert faults[0].core == 1 and "ValueError: bad task in a slot" in faults[0].traceback
    assert "bad task 7" in faults[1].traceback
    assert "raised an exception" in capfd.readouterr().err
    after = []
    machine.smp.set(lambda: after.append(1), 1)
    until(lambda: after, "core 1 to run again")


def test_a_c_task_that_faults_is_reported_and_its_core_recovers(machine, helpers, capfd):
    machine.smp.enqueue(helpers.addr("crash"), 0x10)
    machine.smp.enqueue(helpers.addr("divide"), 0)
    machine.smp.wait()
    kinds = sorted((f.kind, f.address if f.kind == "SIGSEGV" else None) for f in machine.faults)
    assert kinds == [("SIGFPE", None), ("SIGSEGV", 0x10)]
    assert all(f.task in (helpers.addr("crash"), helpers.addr("divide")) for f in machine.faults)
    err = capfd.readouterr().err
    assert "SIGSEGV at address 0x10" in err and "SIGFPE" in err and "core back to idle" in err
    machine.smp.set(helpers.addr("crash"), 1)
    until(lambda: not machine.smp.busy(), "core 1 after a slot crash")
    assert machine.faults[-1].core == 1
    for i in range(1000):
        machine.smp.enqueue(helpers.addr("mark"), i, block=True)
    machine.smp.wait()
    assert (helpers.seen[:1000] == 1).all()


def test_a_fault_outside_a_task_prints_the_core_and_ends_the_process():
    script = ("import ctypes, pybaremetal as bm\n"
              "m = bm.Machine(cores=2, memory='8M', console='capture').boot()\n"
              "ctypes.string_at(0x18)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "core 0: SIGSEGV at address 0x18 (machine stopped)" in run.stderr


# --- reset, shutdown ----------------------------------------------------------------------------

def test_reset_forgets_queued_work_and_running_tasks_finish(machine, helpers):
    machine.smp.set(helpers.addr("probe"), 1)
    until(lambda: helpers.lib.probe_started, "the probe")
    ran = []
    for i in range(100):
        machine.smp.enqueue(ran.append, i)                   # core 1 is busy, core 0 not waiting
    machine.smp.enqueue(helpers.addr("mark"), 5)
    assert bm.b_system(bm.RESET) == 1
    assert machine.smp.queued == 0
    assert int(machine.memory[bm.SMP_TABLE + 8:bm.SMP_TABLE + 16].view("<u8")[0]) == 1
    helpers.lib.probe_release = 1
    until(lambda: helpers.lib.counter == 1, "the running probe to finish")
    machine.smp.wait()
    assert ran == [] and helpers.seen[5] == 0
    machine.smp.enqueue(ran.append, "after")
    machine.smp.wait()
    assert ran == ["after"]


def test_shutdown_from_a_worker_ends_the_run_on_core_0():
    m = bm.Machine(cores=2, memory="8M", console="capture")
    steps = []

    def main():
        m.smp.set(lambda: bm.b_system(bm.SHUTDOWN), 1)
        m.smp.wait()
        steps.append("not reached")
    assert m.run(main) is None
    assert steps == [] and not m.faults
    m.halt()


def test_reboot_from_a_task_restarts_the_app_with_the_cores_running():
    m = bm.Machine(cores=2, memory="8M", console="capture")
    runs = []

    def main():
        runs.append(bm.b_system(bm.SMP_NUMCORES))
        if len(runs) == 1:
            m.smp.enqueue(lambda a: bm.b_system(bm.REBOOT))
            m.smp.wait()
        got = []
        m.smp.set(lambda: got.append(bm.b_system(bm.SMP_ID)), 1)
        until(lambda: got, "core 1 after the reboot")
        return got[0]
    with m:
        assert m.run(main) == 1
    assert runs == [2, 2]


# --- examples -----------------------------------------------------------------------------------

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, *args):
    return subprocess.run([sys.executable, "-W", "ignore", "-m", "pybaremetal", "run",
                           os.path.join(EXAMPLES, name), *args],
                          capture_output=True, text=True, timeout=120)


def test_example_smp_says_hello_from_every_core_one_line_each():
    run = run_example("smp.py", "--cores", "3")
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == [f"Hello from core {n}" for n in range(3)]


def test_example_primes_counts_the_same_on_all_cores_as_on_one_with_a_small_queue():
    run = run_example("primes.py", "--cores", "2", "--queue-size", "16", "--", "200000")
    assert run.returncode == 0, run.stderr + run.stdout
    assert run.stdout.startswith("17984 primes below 200,000\n")
