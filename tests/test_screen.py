"""The screen: the LFB in flat memory, SCREEN_* and the InfoMap, PNG snapshots, the window."""
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import pybaremetal as bm
from pybaremetal.screen import parse as parse_screen
from pybaremetal.errors import ArgumentError, StateError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def baremetal(*args, env=None, cache=None):
    env = dict(os.environ if env is None else env)
    if cache:
        env["BAREMETAL_CACHE"] = cache
    return subprocess.run([sys.executable, "-m", "pybaremetal", *args], capture_output=True,
                          stdin=subprocess.DEVNULL, cwd=ROOT, env=env, timeout=60)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("screen-cache"))


def screen_codes():
    return [bm.b_system(code) for code in (bm.SCREEN_LFB_GET, bm.SCREEN_X_GET, bm.SCREEN_Y_GET,
                                           bm.SCREEN_PPSL_GET, bm.SCREEN_BPP_GET)]


def infomap(m):
    mem = m.memory
    return (int(mem[0x5080:0x5088].view("<u8")[0]),
            *(int(mem[a:a + 2].view("<u2")[0]) for a in (0x5088, 0x508A, 0x508C, 0x508E)))


# --- the frame buffer --------------------------------------------------------------------

def test_screen_is_allocated_from_flat_memory_and_described_by_screen_codes_and_infomap():
    with bm.Machine(cores=1, memory="64M", console="capture", input=False, screen="800x600") as m:
        lfb, x, y, ppsl, bpp = m.run(screen_codes)
        assert (x, y, ppsl, bpp) == (800, 600, 800, 32)
        assert lfb == m.screen.address and m.offset(lfb, 800 * 600 * 4) >= 2 << 20
        assert infomap(m) == (lfb, 800, 600, 800, 32)
        assert m.run(lambda: bm.b_system(bm.FREE_MEMORY)) == 62 - 2          # 1.83 MiB -> one page


def test_no_screen_reports_zero_everywhere():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, screen="none") as m:
        assert m.run(screen_codes) == [0, 0, 0, 0, 0]
        assert infomap(m) == (0, 0, 0, 0, 0)
        assert m.run(lambda: bm.b_system(bm.FREE_MEMORY)) == 14


def test_pixels_written_by_the_app_are_in_the_png_as_0x00rrggbb(tmp_path):
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, screen="64x32") as m:
        def draw():
            pixels = bm.screen()
            pixels[:, :] = 0x000000FF                      # blue
            pixels[0, 0] = 0x00FF0000                      # red
            pixels[31, 63] = 0x0000FF00                    # green
            pixels[10, 20] = 0x00123456
        m.run(draw)
        m.screen.save_png(tmp_path / "f.png")
    image = Image.open(tmp_path / "f.png")
    assert image.size == (64, 32) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((63, 31)) == (0, 255, 0)
    assert image.getpixel((20, 10)) == (0x12, 0x34, 0x56) and image.getpixel((5, 5)) == (0, 0, 255)


def test_python_app_gets_the_default_screen_on_asking():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as m:
        before = m.run(screen_codes)
        pixels = m.run(bm.screen)
        after = m.run(screen_codes)
        assert before == [0, 0, 0, 0, 0]
        assert pixels.shape == (768, 1024) and pixels.dtype == np.uint32
        assert after[1:] == [1024, 768, 1024, 32] and infomap(m) == tuple(after)
        assert m.run(lambda: bm.b_system(bm.FREE_MEMORY)) == 14 - 4           # 3 MiB -> two pages
        assert m.run(bm.screen) is m.screen.pixels                            # the same one again


def test_screen_none_refuses_bm_screen():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, screen="none") as m:
        with pytest.raises(StateError, match="screen='none'"):
            m.run(bm.screen)


def test_reboot_keeps_the_screen_reserved_and_cleared():
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, screen="64x64") as m:
        runs = []

        def main():
            pixels = bm.screen()
            runs.append((int(pixels[1, 1]), bm.b_system(bm.FREE_MEMORY), bm.b_system(bm.SCREEN_LFB_GET)))
            pixels[1, 1] = 0xABCDEF
            if len(runs) == 1:
                bm.b_system(bm.REBOOT)
        m.run(main)
        assert runs[0] == (0, 12, m.screen.address) and runs[1] == runs[0]


@pytest.mark.parametrize("spec, size", [("1024x768", (1024, 768)), (" 7 X 9 ", (7, 9)),
                                        ((3, 4), (3, 4)), ("none", None), (None, None)])
def test_screen_specs_are_parsed(spec, size):
    assert parse_screen(spec) == size


@pytest.mark.parametrize("spec", ["big", "0x10", "70000x10", (1,), "10x", (1.5, 2)])
def test_bad_screen_specs_are_clear_errors(spec):
    with pytest.raises(ArgumentError, match="screen"):
        parse_screen(spec)


def test_a_screen_larger_than_memory_is_out_of_memory():
    with pytest.raises(bm.OutOfMemory, match="screen 4000x4000"):
        bm.Machine(cores=1, memory="16M", console="capture", input=False, screen="4000x4000")


# --- the command line --------------------------------------------------------------------

def test_mandelbrot_example_renders_the_set_into_the_png(tmp_path, cache):
    png = tmp_path / "mandel.png"
    done = baremetal("run", "examples/mandelbrot.c", "--screen", "350x240", "--screen-png", str(png),
                     "--cores", "2", "--no-pin", cache=cache)
    assert done.returncode == 0, done.stderr
    assert b"rendered 350x240" in done.stdout
    image = Image.open(png)
    assert image.size == (350, 240)
    # the view spans re -2.5..1.0 and im -1.2..1.2: (-0.2, 0) and (-1, 0) are inside the set,
    # the corners (-2.5, -1.2) and (1, 1.2) escape at once
    inside = [image.getpixel((int((re + 2.5) / 3.5 * 350), 120)) for re in (-0.2, -1.0)]
    assert inside == [(0, 0, 0), (0, 0, 0)]
    for corner in ((0, 0), (349, 239)):
        r, g, b = image.getpixel(corner)
        assert b > 64 and (r, g, b) != (0, 0, 0)
    # on the real axis, just left of the cusp at 0.25 is inside, right of it outside
    assert image.getpixel((int((0.24 + 2.5) / 3.5 * 350), 120)) == (0, 0, 0)
    assert image.getpixel((int((0.30 + 2.5) / 3.5 * 350), 120)) != (0, 0, 0)


DRAW_AND_WAIT = r"""
#include "libBareMetal.h"
int main(void)
{
	u32 *lfb = (u32 *)b_system(SCREEN_LFB_GET, 0, 0);
	u64 x = b_system(SCREEN_X_GET, 0, 0), y = b_system(SCREEN_Y_GET, 0, 0);
	for (u64 i = 0; i < x * y; i++)
		lfb[i] = 0x00FF8000;
	b_system(DELAY, 400000, 0);
	lfb[0] = 0x000000FF;
	return 0;
}
"""


def test_screen_png_every_saves_numbered_frames_and_the_final_one(tmp_path, cache):
    app = tmp_path / "draw.c"
    app.write_text(DRAW_AND_WAIT)
    png = tmp_path / "shot.png"
    done = baremetal("run", str(app), "--screen", "40x30", "--screen-png", str(png),
                     "--screen-png-every", "50", cache=cache)
    assert done.returncode == 0, done.stderr
    frames = sorted(p.name for p in tmp_path.glob("shot-*.png"))
    assert frames and frames[0] == "shot-000000.png"
    assert frames == [f"shot-{i:06d}.png" for i in range(len(frames))]
    final = Image.open(png)
    assert final.getpixel((0, 0)) == (0, 0, 255) and final.getpixel((39, 29)) == (255, 128, 0)


def test_default_screen_for_c_apps_and_none_for_python_apps(tmp_path, cache):
    capp = tmp_path / "s.c"
    capp.write_text('#include "libBareMetal.h"\n#include <stdio.h>\nint main(void) { '
                    'printf("%lu %lu\\n", b_system(SCREEN_X_GET, 0, 0), b_system(SCREEN_Y_GET, 0, 0)); return 0; }\n')
    pyapp = tmp_path / "s.py"
    pyapp.write_text("import pybaremetal as bm\ndef main():\n    bm.b_output('%d' % bm.b_system(bm.SCREEN_X_GET))\n")
    assert baremetal("run", str(capp), cache=cache).stdout == b"1024 768\n"
    assert baremetal("run", str(capp), "--screen", "none", cache=cache).stdout == b"0 0\n"
    assert baremetal("run", str(pyapp)).stdout == b"0"
    assert baremetal("run", str(pyapp), "--screen", "320x240").stdout == b"320"


def test_screen_png_every_without_a_file_and_png_without_a_screen_are_clear_errors():
    done = baremetal("run", "examples/hello.py", "--screen", "64x64", "--screen-png-every", "10")
    assert done.returncode == 2 and b"--screen-png-every needs --screen-png FILE" in done.stderr
    done = baremetal("run", "examples/hello.py", "--screen", "none", "--screen-png", "x.png")
    assert done.returncode == 2 and b"need a screen" in done.stderr


def test_a_python_app_watched_with_screen_png_gets_the_default_screen(tmp_path):
    app = tmp_path / "red.py"
    app.write_text("import pybaremetal as bm\ndef main():\n    bm.screen()[:] = 0xFF0000\n")
    done = baremetal("run", str(app), "--screen-png", str(tmp_path / "red.png"))
    assert done.returncode == 0, done.stderr
    image = Image.open(tmp_path / "red.png")
    assert image.size == (1024, 768) and image.getpixel((1023, 767)) == (255, 0, 0)


def test_window_without_a_display_fails_with_a_clear_message():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = baremetal("run", "examples/hello.py", "--screen", "64x64", "--window", env=env)
    assert done.returncode == 2
    assert b"--window needs a display" in done.stderr and b"Traceback" not in done.stderr
    assert done.stdout == b""                                  # the app did not run


def xwd_pixel(data, x, y):
    """The (r, g, b) of pixel (x, y) in an X window dump (xwd's format: a big-endian header of
    25 u32 fields, the window name, a colour map of 12-byte entries, then the pixels)."""
    fields = struct.unpack(">25I", data[:100])
    header_size, byte_order, bits_per_pixel, bytes_per_line = fields[0], fields[7], fields[11], fields[12]
    masks, ncolors = fields[14:17], fields[19]
    offset = header_size + 12 * ncolors + y * bytes_per_line + x * bits_per_pixel // 8
    value = int.from_bytes(data[offset:offset + bits_per_pixel // 8], "little" if byte_order == 0 else "big")
    return tuple((value & mask) >> ((mask & -mask).bit_length() - 1) for mask in masks)


WINDOW_APP = r"""
#include "libBareMetal.h"
#include <stdio.h>
int main(void)
{
	u32 *lfb = (u32 *)b_system(SCREEN_LFB_GET, 0, 0);
	for (u64 i = 0; i < 64 * 48; i++)
		lfb[i] = 0x0000FF00;
	u64 deadline = b_system(TIMECOUNTER, 0, 0) + 120000000000ull;
	u8 key = 0;
	while ((key = b_input()) == 0 && b_system(TIMECOUNTER, 0, 0) < deadline)
		b_system(DELAY, 1000, 0);
	printf("key %c\n", key ? key : '-');
	return 0;
}
"""


def start_xvfb():
    """(server, display): a virtual X server on a display number it picked itself (-displayfd),
    so test runs side by side never share one; ready once it has said its number."""
    read_end, write_end = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "320x240x24",
                               "-nolisten", "tcp"], pass_fds=(write_end,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        number = f.readline().strip()
    if not number:
        server.wait()
        pytest.fail("Xvfb did not start")
    return server, f":{number}"


def wait_for(what, check, process, seconds=60, describe=None):
    """Poll check() until it returns something true; fail if ``process`` ends first (with
    its stderr) or after ``seconds`` (a bound for a stuck run, not a timing assertion).  On
    the timeout the failure says where the run was: a process started with ``-X faulthandler``
    prints every thread's stack on SIGABRT; ``describe()`` adds what the test can see."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}: {process.stderr.read().decode()}")
        time.sleep(0.05)
    seen = describe() if describe is not None else ""
    process.send_signal(signal.SIGABRT)
    try:
        _, err = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    pytest.fail(f"{what}: not within {seconds} s; {seen}\nthe run's stderr:\n{err.decode()}")


def test_window_on_a_display_nobody_serves_is_a_clear_error_not_a_silent_run(tmp_path, cache):
    """SDL falls back to a driver that draws nowhere when it cannot reach the display: a run
    asking for a window must say so and stop (exit 2), not go on without one."""
    pytest.importorskip("pygame")
    app = tmp_path / "wait.c"
    app.write_text('#include "libBareMetal.h"\nint main(void) { b_system(DELAY, 5000000, 0); return 0; }\n')
    env = dict(os.environ, DISPLAY=":4321", BAREMETAL_CACHE=cache)
    env.pop("WAYLAND_DISPLAY", None)
    done = subprocess.run([sys.executable, "-m", "pybaremetal", "run", str(app), "--screen", "64x48", "--window"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]     # one line
    assert "--window: cannot open a window on display ':4321'" in done.stderr


def test_window_shows_the_screen_and_sends_keys_to_b_input(tmp_path, cache):
    """Under a virtual X server: the window shows the green frame; a key typed into it (xdotool)
    reaches b_input.  Every step waits for what it needs (the window, a green frame, the key
    arriving), so a slow or busy host changes how long it takes, not the outcome."""
    for tool in ("Xvfb", "xdotool", "xwd", "xwininfo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (the window test needs xvfb, xdotool, x11-apps, x11-utils)")
    pytest.importorskip("pygame")
    app = tmp_path / "win.c"
    app.write_text(WINDOW_APP)
    built = subprocess.run([sys.executable, "-c", f"from pybaremetal.apps import c; c.cached_build([{str(app)!r}])"],
                           cwd=ROOT, env=dict(os.environ, BAREMETAL_CACHE=cache), capture_output=True, text=True)
    assert built.returncode == 0, built.stderr             # built before the clock of any wait
    server, display = start_xvfb()
    run = None
    try:
        env = dict(os.environ, DISPLAY=display, BAREMETAL_CACHE=cache)
        run = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "pybaremetal", "run", str(app),
                                "--screen", "64x48", "--window"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)

        def window_id():
            found = subprocess.run(["xwininfo", "-name", "baremetal"], env=env, capture_output=True, text=True)
            return found.returncode == 0 and found.stdout.split("Window id:")[1].split()[0]

        def windows():                          # the X server's windows, for a failure
            tree = subprocess.run(["xwininfo", "-root", "-tree"], env=env, capture_output=True, text=True)
            return f"the X server's windows: {tree.stdout[-1500:]}"

        window = wait_for("the window appeared", window_id, run, describe=windows)

        def green_frame():
            shot = subprocess.run(["xwd", "-id", window, "-silent"], env=env, capture_output=True)
            return shot.returncode == 0 and xwd_pixel(shot.stdout, 32, 24) == (0, 255, 0)

        wait_for("the window showed the green frame", green_frame, run)

        def key_arrived():                      # typed again until the app has it and ends
            subprocess.run(["xdotool", "windowfocus", "--sync", window], env=env, capture_output=True)
            subprocess.run(["xdotool", "type", "q"], env=env, capture_output=True)
            try:
                return run.wait(timeout=0.5) is not None
            except subprocess.TimeoutExpired:
                return False

        wait_for("the key reached the app", key_arrived, run)
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        assert out == b"key q\n"
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        server.terminate()
        server.wait()
