"""Hostile inputs to `baremetal run` with a flat binary: paths that are not images, images
larger than any machine, output nobody reads.  Each ends with one line (or none) and the
right exit status, never a traceback or a hang."""
import os
import subprocess
import sys

from test_binary import ROOT, assemble


def test_images_that_are_not_regular_files_or_far_too_big_are_refused_before_reading(tmp_path):
    (tmp_path / "dir.app").mkdir()
    os.mkfifo(tmp_path / "fifo.app")                 # reading it would block forever
    os.symlink("/dev/zero", tmp_path / "zero.app")   # ...or never end
    with open(tmp_path / "sparse.app", "wb") as f:   # 1 TiB, all holes: must not be read
        f.truncate(1 << 40)
    expected = {"dir.app": b"a directory, not an app", "fifo.app": b"not a regular file",
                "zero.app": b"not a regular file", "sparse.app": b"(1099511627776 bytes) does not fit"}
    for name, message in expected.items():
        done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", str(tmp_path / name)],
                              stdin=subprocess.DEVNULL, capture_output=True, cwd=ROOT, timeout=60)
        assert done.returncode == 2, (name, done.stderr)
        assert message in done.stderr and done.stderr.count(b"\n") == 1, (name, done.stderr)
    image = assemble(tmp_path, "ret\n")
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, "--memory", "1T"],
                          stdin=subprocess.DEVNULL, capture_output=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stderr) == (
        2, b"baremetal: error: binaries run on machines of at most 16 GiB, not 1048576 MiB\n")


SPAM = "again:\n    lea rsi, [line]\n    mov ecx, 6\n    call [abs 0x100018]\n    jmp again\nline: db 'hello', 10\n"


def test_a_binary_writing_into_a_pipe_nobody_reads_ends_as_sigpipe_would(tmp_path):
    image = assemble(tmp_path, SPAM)
    app = subprocess.Popen([sys.executable, "-m", "pybaremetal", "run", image], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert app.stdout.read(12) == b"hello\nhello\n"
        app.stdout.close()                           # as `| head` does
        err = app.stderr.read()
        assert (app.wait(timeout=30), err) == (141, b"")
    finally:
        app.kill()


def test_a_run_with_stdout_closed_ends_with_one_line_not_a_traceback(tmp_path):
    image = assemble(tmp_path, SPAM)
    done = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "pybaremetal", "run",
                           image, "--timeout", "1"], stdin=subprocess.DEVNULL, capture_output=True,
                          cwd=ROOT, timeout=60)
    assert (done.returncode, done.stderr) == (124, b"baremetal: timeout: the run did not end in time\n")


def test_reading_an_io_port_is_a_clear_fault_as_writing_one_is(tmp_path):
    image = assemble(tmp_path, "in al, 0x60\nret\n")     # the emulated CPU read 0 and went on
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image], stdin=subprocess.DEVNULL,
                          capture_output=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1, done.stderr
    assert b"I/O port 0x60 on core 0" in done.stderr and b"no device there" in done.stderr


def test_the_last_frame_is_saved_when_the_timeout_ends_a_binary_that_never_returns(tmp_path):
    image = assemble(tmp_path, """
    mov rcx, 0x20
    call [abs 0x100040]            ; SCREEN_LFB_GET
    mov dword [rax], 0x00FF0000    ; one red pixel, then spin for ever
.spin:
    jmp .spin
""")
    png = tmp_path / "last.png"
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", image, "--screen", "1024x768",
                           "--screen-png", str(png), "--timeout", "1"], stdin=subprocess.DEVNULL,
                          capture_output=True, cwd=ROOT, timeout=60)
    assert (done.returncode, done.stderr) == (124, b"baremetal: timeout: the run did not end in time\n")
    from PIL import Image
    with Image.open(png) as frame:
        assert frame.size == (1024, 768) and frame.getpixel((0, 0)) == (255, 0, 0)
