"""C apps as upstream's demos write them: their own functions bind first, system-area addresses
(page 0 included) and the b_user entry, upper-half addresses (--flat), ../libBareMetal.h, C++,
and the exit status of flat binaries.  Real gcc/g++, real processes, KVM for binaries."""
import os
import subprocess
import sys

import pytest

import pybaremetal as bm
from pybaremetal.apps import c as capps
from pybaremetal.cpu import kvm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_kvm = pytest.mark.skipif(not kvm.available(), reason="needs /dev/kvm")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("capps-cache"))


def baremetal(*args, cache=None, cwd=ROOT):
    env = dict(os.environ, BAREMETAL_CACHE=cache) if cache else None
    return subprocess.run([sys.executable, "-m", "pybaremetal", *map(str, args)], capture_output=True,
                          stdin=subprocess.DEVNULL, cwd=cwd, env=env, timeout=120)


def test_an_apps_own_rand_binds_before_libcs(tmp_path, cache):
    path = tmp_path / "rand.c"
    path.write_text('#include "libBareMetal.h"\n#include <stdio.h>\n'
                    "int rand(void) { return 4; }                 /* raytrace has its own */\n"
                    "int main(void) { printf(\"%d %d\\n\", rand(), rand()); return 0; }\n")
    done = baremetal("run", path, "--screen", "none", cache=cache)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"4 4\n"


def test_smp_lock_on_page_0_and_the_b_user_entry_work_as_on_the_kernel(tmp_path):
    path = tmp_path / "lock0.c"
    path.write_text(r"""#include "libBareMetal.h"
static u64 counter;

static void add(void)
{
	for (int i = 0; i < 20000; i++) {
		b_system(SMP_LOCK, 0, 0);             /* raytrace's lock: address 0 */
		counter++;
		b_system(SMP_UNLOCK, 0, 0);
	}
}

int main(void)
{
	void (*user)(void) = *(void (**)(void))0x100048;   /* uitestc calls the b_user entry */
	user();
	b_system(SMP_SET, (u64)add, 1);
	add();
	while (b_system(SMP_BUSY, 0, 0))
		;
	b_system(DUMP_MEM, 0, 4);
	b_system(SMP_LOCK, 0, 0);                     /* left taken: the host sees it in page 0 */
	return counter == 40000 ? 0 : 1;
}
""")
    with bm.Machine(cores=2, memory="16M", console="capture", input=False, pin=False) as m:
        assert capps.run(m, str(path), []) == 0
        assert m.memory[0] & 1 == 1                             # the lock word is the IDT's
        out = m.console.output()
    assert out.startswith(b"0x0000000000000000")


@needs_kvm
def test_upper_half_addresses_say_to_use_flat_and_flat_runs_the_app(tmp_path, cache):
    path = tmp_path / "plasma.c"
    path.write_text(r"""#include "libBareMetal.h"
int main(void)
{
	volatile u32 *pixels = (u32 *)0xFFFF800000F00000;      /* as color-plasma's buffer */
	pixels[0] = 0x1234;
	b_output("drawn\n", 6);
	return pixels[0] == 0x1234 ? 3 : 4;
}
""")
    done = baremetal("run", path, "--screen", "none", cache=cache)
    last = done.stderr.decode().strip().splitlines()[-1]
    assert done.returncode != 0 and f"baremetal run {path} --flat" in last, done.stderr
    done = baremetal("run", path, "--flat", cache=cache)
    assert (done.returncode, done.stdout) == (3, b"drawn\n"), done.stderr


def test_an_app_in_a_subdirectory_finds_dotdot_libbaremetal_h(tmp_path, cache):
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "model.c"
    path.write_text('#include "../libBareMetal.h"\n'
                    'int main(void) { b_output("found\\n", 6); return 0; }\n')
    done = baremetal("run", path, "--screen", "none", cache=cache)
    assert (done.returncode, done.stdout) == (0, b"found\n"), done.stderr


def test_a_cpp_app_runs_with_the_standard_library(tmp_path, cache):
    path = tmp_path / "app.cpp"
    path.write_text('#include "libBareMetal.h"\n#include <string>\n#include <vector>\n'
                    "int main(int argc, char **argv) {\n"
                    "  std::vector<std::string> words(argv + 1, argv + argc);\n"
                    "  std::string line = std::to_string(words.size()) + \" \" + words.at(1) + \"\\n\";\n"
                    "  b_output(line.data(), line.size());\n  return 0;\n}\n")
    done = baremetal("run", path, "--screen", "none", "--", "a", "b", cache=cache)
    assert (done.returncode, done.stdout) == (0, b"2 b\n"), done.stderr
    built = tmp_path / "app.so"                                     # and `baremetal cc` builds it
    assert baremetal("cc", path, "-o", built).returncode == 0
    done = baremetal("run", built, "--screen", "none", "--", "c", "d")
    assert (done.returncode, done.stdout) == (0, b"2 d\n"), done.stderr


@needs_kvm
@pytest.mark.parametrize("option, status", [((), 0), (("--exit-status", "zero"), 0),
                                            (("--exit-status", "rax"), 208)])
def test_a_flat_app_that_returns_exits_0_unless_asked_for_rax(tmp_path, option, status):
    source = tmp_path / "euler.asm"
    source.write_text("BITS 64\nORG 0xFFFF800000000000\nmov eax, 233168\nret\n")  # RAX & 0xFF = 208
    done = baremetal("run", source, *option)
    assert done.returncode == status, done.stderr
