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


# --- user mistakes: one line naming the problem and the fix, exit 2, no traceback ------------

def cli_main(argv, capture):
    """``baremetal ARGV`` in this process: (exit status, stdout, stderr) as ``capture`` (the
    capsys or capfd fixture) saw them."""
    import signal
    import warnings
    from pybaremetal import cli
    saved = signal.getsignal(signal.SIGTERM), warnings.formatwarning
    try:
        try:
            status = cli.main(list(argv))
        except SystemExit as stop:               # argparse's exits
            status = stop.code
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        warnings.formatwarning = saved[1]
    out, err = capture.readouterr()
    return status, out, err


HELLO = os.path.join(ROOT, "examples", "hello.py")


@pytest.mark.parametrize("options, said", [
    (["--memory", "100T"], "memory: cannot map 100 TiB"),
    (["--memory", "99999999999999999999999G"], "memory: cannot map more than 16 EiB"),
    (["--memory", "lots"], "no unit means MiB"),
    (["--queue-size", "-1"], "queue_size must be a power of two"),
    (["--queue-size", "4294967296"], "queue_size must be a power of two"),
    (["--queue-size", "3"], "queue_size must be a power of two"),
    (["--cores", "x"], "argument --cores: invalid int value: 'x' (see baremetal run --help)"),
    (["--console", "/"], "console: cannot write '/': Is a directory"),
    (["--console", "/nonexistent/x"], "console: cannot write '/nonexistent/x': No such file"),
    (["--console", ""], "console: empty path"),
    (["--console", "capture"], "--console capture is for Machine(console='capture') in Python"),
    (["--input", "/nonexistent"], "input: cannot read '/nonexistent': No such file"),
    (["--input", "/"], "input: '/' is a directory"),
    (["--screen-png", "/nonexistent/x.png"], "--screen-png: cannot use the directory /nonexistent"),
    (["--screen-png", "/"], "--screen-png: / is a directory"),
    (["--screen-png", ""], "--screen-png: empty path"),
    (["--drive", "/nonexistent/x.img"], "drive /nonexistent/x.img: cannot open it"),
    (["--nic", "bogus"], "unknown kind 'bogus'"),
    (["extra-argument"], "unrecognized arguments: extra-argument; arguments for the app go after --"),
])
def test_run_mistakes_are_one_line_and_exit_2(options, said, capsys):
    status, out, err = cli_main(["run", HELLO, *options], capsys)
    assert status == 2 and out == ""                     # checked before the app runs
    assert said in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_screen_png_mistakes_are_found_before_the_app_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = app(tmp_path, f"def main():\n    open({str(marker)!r}, 'w').close()\n")
    status, _, err = cli_main(["run", path, "--screen-png", str(tmp_path / "no" / "x.png")], capsys)
    assert status == 2 and "--screen-png" in err and not marker.exists()


@pytest.mark.parametrize("argv, said", [
    (["cc", "examples/hello.py"], "examples/hello.py is a Python app, which needs no build: baremetal run"),
    (["cc", "README.md"], "README.md is not a C source"),
    (["cc"], "cc: no C sources given"),
    (["frob"], "invalid choice: 'frob'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_other_command_mistakes_are_one_line_and_exit_2(argv, said, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status, _, err = cli_main(argv, capsys)
    assert status == 2 and said in err and err.count("\n") == 1, err


def test_version_prints_the_package_version(capsys):
    import pybaremetal
    status, out, _ = cli_main(["--version"], capsys)
    assert status == 0 and out == f"baremetal (pybaremetal) {pybaremetal.__version__}\n"


def test_console_output_that_cannot_be_written_is_reported(capsys):
    status, _, err = cli_main(["run", HELLO, "--console", "/dev/full", "--cores", "1"], capsys)
    assert status == 1
    assert err == ("baremetal: error: 14 bytes of console output to /dev/full were lost "
                   "(No space left on device); give another --console\n")


def test_a_bare_size_means_mib_for_memory_and_create(tmp_path, capfd):
    image = tmp_path / "new.img"
    path = app(tmp_path, "def main():\n    bm.b_output(str(bm.current_machine().memory_size >> 20))\n")
    status, out, err = cli_main(["run", path, "--cores", "1", "--memory", "64", "--drive",
                                 f"{image},create=3"], capfd)
    assert status == 0 and out == "64", err
    assert image.stat().st_size == 3 << 20
    from pybaremetal.memory import parse_size
    assert parse_size("4096B") == 4096 and parse_size(8192) == 8192     # bytes: B, or an int


def test_unprivileged_users_get_one_line_for_unwritable_paths():
    import shutil
    from unprivileged import foreign_directory, run_unprivileged
    foreign = foreign_directory()
    try:
        for options, said in ((["--console", f"{foreign}/out"], "console: cannot write"),
                              (["--screen-png", f"{foreign}/x.png"], "cannot be written (permission denied)"),
                              (["--drive", f"{foreign}/d.img,create=1"], "cannot create it: Permission denied")):
            done = run_unprivileged([sys.executable, "-m", "pybaremetal", "run", HELLO, "--cores", "1",
                                     *options], cwd=ROOT, stdin=subprocess.DEVNULL)
            assert done.returncode == 2 and said in done.stderr, done.stderr
            assert done.stderr.count("\n") == 1 and done.stdout == ""
        assert os.listdir(foreign) == []
    finally:
        shutil.rmtree(foreign)
