"""C apps: `baremetal cc`, `baremetal run app.c / app.so`, the hosted libBareMetal.h, the low
window, stdout ordering, SHUTDOWN/REBOOT, the build cache.  Real gcc, real processes."""
import os
import pty
import re
import subprocess
import sys
import termios
import time

import pytest

import pybaremetal as bm
from pybaremetal.apps import c as capps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")



@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("capps-cache"))


def baremetal(*args, cache=None, stdin=subprocess.DEVNULL, cwd=ROOT):
    env = dict(os.environ)
    if cache:
        env["BAREMETAL_CACHE"] = cache
    return subprocess.run([sys.executable, "-m", "pybaremetal", *args], capture_output=True,
                          stdin=stdin, cwd=cwd, env=env, timeout=60)


def source(tmp_path, body, name="app.c", includes=("stdio.h",)):
    path = tmp_path / name
    head = '#include "libBareMetal.h"\n' + "".join(f"#include <{h}>\n" for h in includes)
    path.write_text(head + body)
    return str(path)


# --- the examples -------------------------------------------------------------------------

def test_helloc_example_prints_hello_and_the_machine(cache):
    done = baremetal("run", "examples/helloc.c", "--cores", "2", "--memory", "64M", "--no-pin",
                     "--", "one", "two", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        "Hello from C!", "2 cores, 58 MiB free, screen 1024x768", "argv[1] = one", "argv[2] = two"]


def test_smp_example_every_core_says_hello_once(cache):
    done = baremetal("run", "examples/smp.c", "--cores", "4", "--no-pin", cache=cache)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert sorted(lines[:-1]) == [f"Hello from core {i}" for i in range(4)]
    assert lines[-1] == "4 of 4 cores said hello"


def test_primes_example_counts_on_every_core(cache):
    done = baremetal("run", "examples/primes.c", "--cores", "2", "--no-pin", "--", "200000", cache=cache)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "primes below 200000: 17984" in out and "speedup" in out


# --- building ----------------------------------------------------------------------------

def test_print_include_dir_holds_the_header():
    done = baremetal("cc", "--print-include-dir")
    directory = done.stdout.decode().strip()
    assert done.returncode == 0 and os.path.isfile(os.path.join(directory, "libBareMetal.h"))


EVERY_CODE = r"""
/* an upstream-style app: only libBareMetal.h, every b_system code, every call */
static void out(const char *s, u64 n) { (void)s; (void)n; }

int main(void)
{
	u64 codes[] = { TIMECOUNTER, FREE_MEMORY, SMP_ID, SMP_NUMCORES, SMP_SET, SMP_GET, SMP_LOCK,
			SMP_UNLOCK, SMP_BUSY, TSC, SCREEN_LFB_GET, SCREEN_X_GET, SCREEN_Y_GET,
			SCREEN_PPSL_GET, SCREEN_BPP_GET, NET_STATUS, NET_CONFIG, BUS_READ, BUS_WRITE,
			STDOUT_SET, STDOUT_GET, CALLBACK_TIMER, CALLBACK_NETWORK, CALLBACK_KEYBOARD,
			DUMP_MEM, DUMP_RAX, DELAY, RESET, REBOOT, SHUTDOWN };
	u64 sum = 0;
	void *frame = 0;
	u8 sector[4096];
	uint64_t from_stdint = sizeof codes / sizeof codes[0];    /* the header brings stdint.h */
	for (u64 i = 0; i < from_stdint; i++)
		sum += codes[i];
	sum += b_input() + b_net_rx(&frame, 0) + b_nvs_read(sector, 0, 1, 0) + b_nvs_write(sector, 0, 1, 0);
	b_net_tx(sector, 60, 0);
	u16 lock = 0;
	b_system(SMP_LOCK, (u64)&lock, 0);
	b_system(SMP_UNLOCK, (u64)&lock, 0);
	b_system(STDOUT_SET, (u64)out, 0);
	b_output("unseen", 6);
	b_system(STDOUT_SET, 0, 0);
	u32 x = (u32)b_system(SCREEN_X_GET, 0, 0);
	u16 cores = (u16)b_system(SMP_NUMCORES, 0, 0);
	b_system(DUMP_RAX, sum + x + cores, 0);
	b_output("\n", 1);
	b_system(SHUTDOWN, 0, 0);
	return 3;                       /* not reached: SHUTDOWN ends the run */
}
"""


def test_upstream_style_app_using_every_code_compiles_without_warnings_and_runs(tmp_path, cache):
    path = source(tmp_path, EVERY_CODE, includes=())
    built = baremetal("cc", path, "-o", str(tmp_path / "every.so"), "--", "-Werror")
    assert built.returncode == 0 and built.stderr == b"", built.stderr
    done = baremetal("run", str(tmp_path / "every.so"), "--cores", "1", "--screen", "640x480")
    # 0x6E6 = the sum of the 30 codes; + 640 + 1 core
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"%016X\n" % (0x6E6 + 640 + 1)


def test_cc_names_the_output_after_the_first_source(tmp_path):
    source(tmp_path, "int main(void) { return 0; }\n", name="first.c", includes=())
    done = baremetal("cc", "first.c", cwd=str(tmp_path))
    assert done.returncode == 0 and (tmp_path / "first.so").is_file()


def test_cc_links_several_sources_and_passes_extra_flags(tmp_path):
    source(tmp_path, "int helper(void) { return VALUE; }\n", name="helper.c", includes=())
    main = source(tmp_path, "int helper(void);\nint main(void) { return helper(); }\n", includes=())
    out = str(tmp_path / "two.so")
    done = baremetal("cc", main, str(tmp_path / "helper.c"), "-o", out, "-O0", "--", "-DVALUE=42")
    assert done.returncode == 0, done.stderr
    assert baremetal("run", out).returncode == 42


def test_compile_errors_are_shown_as_gcc_prints_them_and_exit_non_zero(tmp_path, cache):
    path = source(tmp_path, "int main(void) { return undeclared_thing; }\n")
    for command in (("cc", path, "-o", str(tmp_path / "x.so")), ("run", path)):
        done = baremetal(*command, cache=cache)
        assert done.returncode != 0
        assert re.search(rb"app.c:\d+:\d+: error: \S*undeclared_thing\S* undeclared", done.stderr), done.stderr
        assert b"Traceback" not in done.stderr
    assert not (tmp_path / "x.so").exists()


def test_an_app_calling_a_missing_function_fails_to_load_with_its_name(tmp_path, cache):
    path = source(tmp_path, "void b_not_a_call(void);\nint main(void) { b_not_a_call(); return 0; }\n")
    done = baremetal("run", path, cache=cache)
    assert done.returncode == 2 and b"undefined symbol: b_not_a_call" in done.stderr


def test_an_object_without_main_is_a_clear_error(tmp_path):
    source(tmp_path, "int not_main(void) { return 0; }\n", name="lib.c", includes=())
    baremetal("cc", "lib.c", cwd=str(tmp_path))
    done = baremetal("run", str(tmp_path / "lib.so"))
    assert done.returncode == 2 and b"has no main()" in done.stderr


# --- the cache ---------------------------------------------------------------------------

def test_run_rebuilds_when_the_source_changes_and_reuses_otherwise(tmp_path):
    cache = str(tmp_path / "cache")
    path = source(tmp_path, 'int main(void) { printf("one\\n"); return 0; }\n')
    assert baremetal("run", path, cache=cache).stdout == b"one\n"
    built = os.listdir(cache)
    assert baremetal("run", path, cache=cache).stdout == b"one\n"
    assert os.listdir(cache) == built                      # a hit: nothing new built
    source(tmp_path, 'int main(void) { printf("two\\n"); return 0; }\n')
    assert baremetal("run", path, cache=cache).stdout == b"two\n"
    assert len(os.listdir(cache)) == 2


def test_run_rebuilds_when_a_local_header_changes(tmp_path):
    cache = str(tmp_path / "cache")
    (tmp_path / "value.h").write_text("#define VALUE 5\n")
    path = source(tmp_path, '#include "value.h"\nint main(void) { return VALUE; }\n')
    assert baremetal("run", path, cache=cache).returncode == 5
    (tmp_path / "value.h").write_text("#define VALUE 6\n")
    assert baremetal("run", path, cache=cache).returncode == 6


def test_cache_key_covers_flags_and_sources(tmp_path):
    path = source(tmp_path, "int main(void) { return 0; }\n")
    assert capps.cache_key([path]) == capps.cache_key([path])
    assert capps.cache_key([path], "3") != capps.cache_key([path])
    assert capps.cache_key([path], extra=("-DX",)) != capps.cache_key([path])


# --- running -----------------------------------------------------------------------------

def test_argv_reaches_main_and_its_return_value_is_the_exit_code(tmp_path, cache):
    path = source(tmp_path, r"""
int main(int argc, char **argv)
{
	for (int i = 0; i < argc; i++)
		printf("[%s]", i == 0 ? "app" : argv[i]);
	printf("\n");
	return argc + 10;
}
""")
    done = baremetal("run", path, "--", "a b", "--c", cache=cache)
    assert done.stdout == b"[app][a b][--c]\n" and done.returncode == 13


def test_printf_and_b_output_come_out_in_program_order_through_a_pipe(tmp_path, cache):
    path = source(tmp_path, r"""
int main(void)
{
	for (int i = 0; i < 3; i++) {
		printf("printf %d\n", i);
		b_output("b_output\n", 9);
	}
	printf("last, unflushed");
	return 0;
}
""")
    done = baremetal("run", path, cache=cache)
    assert done.stdout == b"printf 0\nb_output\nprintf 1\nb_output\nprintf 2\nb_output\nlast, unflushed"


def test_upstream_absolute_reads_of_the_system_area_work(tmp_path, cache):
    path = source(tmp_path, r"""
int main(void)
{
	printf("cores %u/%u ram %u free %u/%lu\n", *(u16 *)0x5012, *(u16 *)0x5014, *(u32 *)0x5020,
	       *(u32 *)0x110104, b_system(FREE_MEMORY, 0, 0));
	printf("ids %u %u %u\n", *(u32 *)0x5100, *(u32 *)0x5104, *(u32 *)0x5108);
	printf("lfb %d %u %u %u %u\n", *(u64 *)0x5080 == b_system(SCREEN_LFB_GET, 0, 0),
	       *(u16 *)0x5088, *(u16 *)0x508A, *(u16 *)0x508C, *(u16 *)0x508E);
	printf("slots %lx %lx\n", *(u64 *)0x1FF800 & 1, *(u64 *)0x1FF818 & 1);
	printf("call table %d\n", *(void **)0x100018 == (void *)b_output);
	return 0;
}
""")
    done = baremetal("run", path, "--cores", "3", "--memory", "32M", "--screen", "320x200", "--no-pin", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == [
        "cores 3/3 ram 30 free 28/28", "ids 0 1 2", "lfb 1 320 200 320 32", "slots 1 0", "call table 1"]


def test_low_window_is_shared_with_flat_memory_both_ways(tmp_path):
    path = source(tmp_path, r"""
int main(void)
{
	volatile u32 *word = (u32 *)0x130000;
	printf("%x\n", *word);
	*word = 0xC0FFEE;
	return 0;
}
""")
    built = str(tmp_path / "app.so")
    capps.build([path], built)
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as m:
        m.memory[0x130000:0x130004].view("<u4")[0] = 0xBEEF
        capps.run(m, built, [])
        assert m.memory[0x130000:0x130004].view("<u4")[0] == 0xC0FFEE
        assert bm._native.lib.bm_lowmap_owner(m._c) == 1
    assert bm._native.lib.bm_lowmap_owner(m._c) == 0             # released at halt


def test_a_second_machine_runs_without_the_window_and_says_so(tmp_path, capfd):
    path = source(tmp_path, "int main(void) { b_output(\"ok\", 2); return 0; }\n")
    built = str(tmp_path / "app.so")
    capps.build([path], built)
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as first:
        capps.run(first, built, [])
        with bm.Machine(cores=1, memory="16M", console="capture", input=False) as second:
            assert capps.run(second, built, []) == 0
            assert second.console.output() == b"ok"
    assert "another machine of this process owns the low window" in capfd.readouterr().err


def test_shutdown_ends_the_run_with_exit_code_zero(tmp_path, cache):
    path = source(tmp_path, r"""
int main(void)
{
	printf("before\n");
	b_system(SHUTDOWN, 0, 0);
	printf("after\n");
	return 9;
}
""")
    done = baremetal("run", path, cache=cache)
    assert done.returncode == 0 and done.stdout == b"before\n"


def test_reboot_runs_main_again_with_fresh_globals(tmp_path, cache):
    marker = tmp_path / "boots"
    path = source(tmp_path, r"""
static int runs;                /* a reboot reloads the app: back to 0 */

int main(int argc, char **argv)
{
	FILE *f = fopen(argv[1], "a+");
	fseek(f, 0, SEEK_END);
	long boots = ftell(f);
	fputc('x', f);
	fclose(f);
	runs++;
	printf("boot %ld runs %d free %lu\n", boots, runs, b_system(FREE_MEMORY, 0, 0));
	if (boots == 0)
		b_system(REBOOT, 0, 0);
	return 4;
}
""")
    done = baremetal("run", path, "--memory", "32M", "--", str(marker), cache=cache)
    assert done.returncode == 4, done.stderr
    # the screen (1024x768x4 = 2 pages) stays reserved across the reboot
    assert done.stdout == b"boot 0 runs 1 free 26\nboot 1 runs 1 free 26\n"


def test_exit_ends_the_run_like_a_return_and_the_machine_halts_cleanly(tmp_path, cache):
    path = source(tmp_path, r"""
#include <stdlib.h>
static void deep(void) { printf("leaving\n"); exit(6); }

int main(void)
{
	deep();
	printf("not reached\n");
	return 0;
}
""")
    controller, terminal = pty.openpty()
    try:
        before = termios.tcgetattr(terminal)
        done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", path], stdin=terminal,
                              capture_output=True, cwd=ROOT, timeout=60, env=dict(os.environ, BAREMETAL_CACHE=cache))
        assert termios.tcgetattr(terminal) == before          # the console's raw mode was undone
    finally:
        os.close(controller)
        os.close(terminal)
    assert done.returncode == 6 and done.stdout == b"leaving\n", done.stderr


def test_stdout_set_from_c_redirects_b_output(tmp_path, cache):
    path = source(tmp_path, r"""
#include <ctype.h>
static void shout(const char *s, u64 n)
{
	char up[64];
	for (u64 i = 0; i < n && i < sizeof up; i++)
		up[i] = (char)toupper(s[i]);
	b_system(STDOUT_SET, 0, 0);             /* 0: back to the console, for the real write */
	b_output(up, n);
	b_system(STDOUT_SET, (u64)shout, 0);
}

int main(void)
{
	b_system(STDOUT_SET, (u64)shout, 0);
	b_output("quiet\n", 6);
	return b_system(STDOUT_GET, 0, 0) == (u64)shout ? 0 : 1;
}
""")
    done = baremetal("run", path, cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"QUIET\n"


def test_run_in_process_captures_b_output_and_returns_main(tmp_path):
    path = source(tmp_path, 'int main(void) { b_output("captured", 8); return 21; }\n', includes=())
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as m:
        assert capps.run(m, path, []) == 21
        assert m.console.output() == b"captured"


def test_smp_set_runs_an_app_function_and_smp_lock_guards_a_global(tmp_path, cache):
    path = source(tmp_path, r"""
static u16 lock;
static u64 counter;

static void add(void)
{
	for (int i = 0; i < 100000; i++) {
		b_system(SMP_LOCK, (u64)&lock, 0);
		counter++;
		b_system(SMP_UNLOCK, (u64)&lock, 0);
	}
}

int main(void)
{
	u64 cores = b_system(SMP_NUMCORES, 0, 0);
	for (u64 core = 1; core < cores; core++)
		if (!b_system(SMP_SET, (u64)add, core))
			return 100;
	add();
	while (b_system(SMP_BUSY, 0, 0))
		;
	printf("%lu\n", counter);
	return 0;
}
""")
    done = baremetal("run", path, "--cores", "3", "--no-pin", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"300000\n"


def test_work_queue_from_c_runs_every_task_once(tmp_path, cache):
    path = source(tmp_path, r"""
static u64 seen[100];

static void task(u64 arg) { __atomic_fetch_add(&seen[arg], 1, __ATOMIC_RELAXED); }

int main(void)
{
	for (u64 i = 0; i < 100; i++)
		if (!b_smp_enqueue((void *)task, i))
			return 100;
	u64 code, arg;
	while ((code = b_smp_dequeue(&arg)) != 0)
		b_smp_run(code, arg);
	b_smp_wait();
	for (u64 i = 0; i < 100; i++)
		if (seen[i] != 1)
			return 101;
	printf("all once\n");
	return 0;
}
""")
    done = baremetal("run", path, "--cores", "2", "--no-pin", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"all once\n"


CRASH = r"""
static void crash(void) { *(volatile u64 *)0xDEAD0000 = 1; }

int main(int argc, char **argv)
{
	printf("started\n");
	if (argc > 1 && argv[1][0] == 'm')
		crash();
	b_system(SMP_SET, (u64)crash, 1);
	while (b_system(SMP_BUSY, 0, 0))
		;
	return 0;
}
"""


@pytest.mark.parametrize("where", ["main", "core"])
def test_a_crash_reports_core_and_address_and_exits_non_zero(tmp_path, cache, where):
    path = source(tmp_path, CRASH)
    done = baremetal("run", path, "--cores", "2", "--no-pin", "--", where, cache=cache)
    assert done.returncode == 128 + 11
    assert done.stdout == b"started\n"
    report = done.stderr.decode()
    core = "0" if where == "main" else "1"
    assert f"core {core}: SIGSEGV at address 0xdead0000" in report
    assert f"the app crashed in {'main' if where == 'main' else 'a task'} on core {core}" in report
    assert "machine halted, drives flushed" in report and "Traceback" not in report


def test_a_crash_in_main_restores_the_terminal(tmp_path, cache):
    path = source(tmp_path, CRASH)
    controller, terminal = pty.openpty()
    try:
        before = termios.tcgetattr(terminal)
        done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", path, "--cores", "2", "--no-pin",
                               "--", "main"], stdin=terminal, capture_output=True, cwd=ROOT, timeout=60,
                              env=dict(os.environ, BAREMETAL_CACHE=cache))
        assert done.returncode == 128 + 11, done.stderr
        assert termios.tcgetattr(terminal) == before          # raw mode undone
    finally:
        os.close(controller)
        os.close(terminal)


def test_wallclock_timer_set_and_sleep_from_c(tmp_path):
    path = source(tmp_path, r"""
static volatile u64 ticks;
static void tick(void) { ticks++; }
int main(void) {
    char line[96];
    u64 now = b_system(WALLCLOCK, 0, 0);
    u64 period = b_system(TIMER_SET, 2000000, 0);
    b_system(CALLBACK_TIMER, (u64)tick, 0);
    while (ticks < 3)
        b_system(SLEEP, 1000000, 0);
    b_system(CALLBACK_TIMER, 0, 0);
    int n = snprintf(line, sizeof line, "%lu %lu %lu", now, period, b_system(SLEEP, 1000, 0));
    b_output(line, n);
    return 0;
}
""")
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as m:
        assert capps.run(m, path, []) == 0
        now, period, slept = map(int, m.console.output().split())
    assert abs(now - time.time()) <= 2 and (period, slept) == (2000000, 1000)


KEYBOARD_APP = r"""
static volatile int got, sum;
static void on_key(void)
{
	u8 key = b_input();                     /* the key this call is for */
	if (key) {
		sum += key;
		got++;
	}
}

int main(void)
{
	b_system(CALLBACK_KEYBOARD, (u64)on_key, 0);
	u64 start = b_system(TIMECOUNTER, 0, 0);
	while (got < 3 && b_system(TIMECOUNTER, 0, 0) - start < 10000000000ull)
		;
	b_system(CALLBACK_KEYBOARD, 0, 0);
	return got == 3 ? sum : -got;
}
"""


@pytest.mark.parametrize("arrival", ["waiting", "typed"])
def test_the_keyboard_callback_runs_once_per_key(tmp_path, arrival):
    """CALLBACK_KEYBOARD: keys waiting when it is set (bytes: a memfd, which epoll cannot
    watch) and keys typed later into a pipe each call the callback, which reads its key."""
    import threading
    path = source(tmp_path, KEYBOARD_APP, includes=())
    built = str(tmp_path / "app.so")
    capps.build([path], built)
    if arrival == "waiting":
        source_of_keys, typist = b"abc", None
    else:
        read_end, write_end = os.pipe()
        source_of_keys = read_end

        def type_keys():
            for key in b"abc":
                time.sleep(0.05)
                os.write(write_end, bytes([key]))
        typist = threading.Thread(target=type_keys)
    with bm.Machine(cores=1, memory="16M", console="capture", input=source_of_keys) as m:
        if typist:
            typist.start()
        assert capps.run(m, built, []) == sum(b"abc")
        assert bm._native.lib.bm_service_count(m._c, 2) == 3
    if typist:
        typist.join()
        os.close(write_end)
        os.close(read_end)
