"""`baremetal run`: real processes, exit codes, argv, errors."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def baremetal(*args, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "pybaremetal", *args], capture_output=True,
                          stdin=stdin, cwd=ROOT, timeout=60)


def app(tmp_path, body, name="app.py"):
    path = tmp_path / name
    path.write_text("import sys\nimport pybaremetal as bm\n\n" + body)
    return str(path)


def test_hello_example_prints_and_exits_zero():
    done = baremetal("run", "examples/hello.py")
    assert done.returncode == 0 and done.stdout == b"Hello, world!\n"


def test_sysinfo_example_reports_the_configured_machine():
    done = baremetal("run", "examples/sysinfo.py", "--cores", "2", "--memory", "64M", "--no-pin")
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert "cores            2" in out and "memory           64 MiB" in out
    assert "free memory      62 MiB" in out and "cores active     2" in out


def test_exit_code_is_mains_return_value(tmp_path):
    assert baremetal("run", app(tmp_path, "def main():\n    return 7\n")).returncode == 7
    assert baremetal("run", app(tmp_path, "def main():\n    pass\n")).returncode == 0


def test_an_exception_prints_the_traceback_and_exits_non_zero(tmp_path):
    done = baremetal("run", app(tmp_path, "def main():\n    bm.b_output('partial ')\n    raise KeyError('oops')\n"))
    assert done.returncode == 1
    assert b"KeyError: 'oops'" in done.stderr and b"Traceback" in done.stderr
    assert done.stdout == b"partial "


def test_arguments_after_double_dash_reach_sys_argv(tmp_path):
    path = app(tmp_path, "def main():\n    bm.b_output(repr(sys.argv[1:]))\n")
    done = baremetal("run", path, "--cores", "1", "--", "one", "--two", "3")
    assert done.stdout == b"['one', '--two', '3']"
    assert baremetal("run", path).stdout == b"[]"


def test_shutdown_exits_zero(tmp_path):
    done = baremetal("run", app(tmp_path, "def main():\n    bm.b_system(bm.SHUTDOWN)\n    return 5\n"))
    assert done.returncode == 0


def test_stdin_reaches_b_input(tmp_path):
    path = app(tmp_path, "def main():\n    keys = bytes(iter(bm.b_input, 0))\n    bm.b_output(keys.upper())\n")
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", path], input=b"piped",
                          capture_output=True, cwd=ROOT, timeout=60)
    assert done.stdout == b"PIPED"


def test_unknown_app_kind_names_the_supported_kinds(tmp_path):
    path = tmp_path / "app.xyz"
    path.write_text("")
    done = baremetal("run", str(path))
    assert done.returncode == 2
    assert b"unknown kind of app '.xyz'" in done.stderr and b".py" in done.stderr


def test_missing_app_and_missing_main_are_clear_errors(tmp_path):
    done = baremetal("run", str(tmp_path / "nope.py"))
    assert done.returncode == 2 and b"no such file" in done.stderr
    done = baremetal("run", app(tmp_path, "x = 1\n"))
    assert done.returncode == 2 and b"must define main()" in done.stderr


def test_bad_machine_options_are_clear_errors():
    done = baremetal("run", "examples/hello.py", "--memory", "lots")
    assert done.returncode == 2 and b"memory" in done.stderr and b"Traceback" not in done.stderr


@pytest.mark.parametrize("flag", ["--cores", "--memory", "--console", "--input", "--no-pin", "--drive", "--nic"])
def test_run_help_documents_every_flag(flag):
    done = baremetal("run", "--help")
    assert done.returncode == 0 and flag.encode() in done.stdout


def test_console_option_writes_to_a_file(tmp_path):
    target = tmp_path / "out.txt"
    done = baremetal("run", "examples/hello.py", "--console", str(target))
    assert done.returncode == 0 and done.stdout == b"" and target.read_bytes() == b"Hello, world!\n"
