"""The screen: a linear frame buffer (LFB) in the machine's flat memory.

Upstream's loader hands the kernel the firmware's frame buffer and the kernel describes it to
apps with SCREEN_LFB_GET / SCREEN_X_GET / SCREEN_Y_GET / SCREEN_PPSL_GET / SCREEN_BPP_GET and
the InfoMap fields at 0x5080.  Hosted, the frame buffer is a run of 2 MiB pages allocated from
the machine's flat memory (FREE_MEMORY goes down by what it takes), described to the C core with
bm_screen_configure so that b_system and the InfoMap report it: pixels are 32-bit little-endian
words 0x00RRGGBB, 32 bits per pixel, one scan line = ``ppsl`` pixels (= the width here).

What can watch it (all optional, all reading the same memory while the app draws):

- :meth:`Screen.save_png` (Pillow): one frame; :class:`PngRecorder` saves frames every N ms
  from a Python thread (the app's C code runs with the GIL released, so the thread gets time).
- :class:`Window` (pygame/SDL): a live window that shows the frame buffer and sends key
  presses to b_input through a pipe; needs a display (DISPLAY or WAYLAND_DISPLAY).

Python apps get a screen with ``bm.screen()``: the machine's (height, width) uint32 numpy view,
configuring the default 1024x768 one on the spot if the machine was made without a screen.
"""
import os
import re
import threading

import numpy as np

from ._native import lib
from .current import current_machine
from .errors import ArgumentError, OutOfMemory, StateError, raise_recorded

DEFAULT_SIZE = (1024, 768)
BPP = 32


def parse(spec):
    """(width, height) for a screen spec, or None for no screen.

    ``spec``: None or "none" (no screen), "WxH" like "1024x768", or a (width, height) pair.
    Raises ArgumentError for anything else or sizes outside 1..65535 (the InfoMap holds u16)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "none"):
        return None
    if isinstance(spec, str):
        match = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*", spec)
        if not match:
            raise ArgumentError(f"screen: expected WIDTHxHEIGHT (like 1024x768) or 'none', got {spec!r}")
        size = (int(match.group(1)), int(match.group(2)))
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in spec):
        size = tuple(spec)
    else:
        raise ArgumentError(f"screen: expected 'WxH', (width, height) or 'none', got {spec!r}")
    if not all(1 <= v <= 0xFFFF for v in size):
        raise ArgumentError(f"screen: width and height must be 1..65535, got {size[0]}x{size[1]}")
    return size


class Screen:
    """A machine's frame buffer.  ``pixels`` is the (height, width) uint32 numpy view."""

    def __init__(self, machine, width, height):
        self.machine = machine
        self.width, self.height = width, height
        self.ppsl = width
        self.bpp = BPP
        self.nbytes = self.ppsl * self.height * 4
        self.physical = 0
        self.reserve()

    def reserve(self):
        """Allocate the buffer from flat memory and describe it to the C core, which writes
        the InfoMap's fields (at boot, or now if the machine runs) and keeps the buffer's pages
        through a reboot."""
        physical = lib.bm_guest_reserve_top(self.machine._c, self.nbytes)   # above a binary's heap
        if physical == 0:
            raise_recorded(OutOfMemory, prefix=f"screen {self.width}x{self.height}: ")
        self.physical = physical
        lib.bm_screen_configure(self.machine._c, physical, self.width, self.height, self.ppsl, self.bpp)
        lines = self.machine.memory[physical:physical + self.nbytes].view(np.uint32)
        self.pixels = lines.reshape(self.height, self.ppsl)[:, :self.width]

    @property
    def address(self):
        """The process address of the first pixel (what SCREEN_LFB_GET returns)."""
        return self.machine.base + self.physical

    def image(self):
        """The current frame as a Pillow RGB image (a copy)."""
        from PIL import Image
        raw = self.machine.memory[self.physical:self.physical + self.nbytes]
        # 0x00RRGGBB little-endian is the byte order B, G, R, 0
        return Image.frombuffer("RGB", (self.width, self.height), raw, "raw", "BGRX", self.ppsl * 4, 1)

    def save_png(self, path, compress_level=6):
        """Save the current frame as a PNG file."""
        self.image().save(path, format="PNG", compress_level=compress_level)

    def __repr__(self):
        return f"<Screen {self.width}x{self.height}x{self.bpp} at 0x{self.physical:x}>"


def screen():
    """The calling thread's machine's frame buffer as a (height, width) uint32 numpy array.

    Pixels are 0x00RRGGBB.  A machine made without a screen gets the default 1024x768 one
    now (its memory comes out of FREE_MEMORY).  Raises NoMachineError outside a machine,
    StateError when the machine was made with screen='none'."""
    machine = current_machine()
    if machine.screen is None:
        if machine.screen_spec is not None:
            raise StateError("this machine was made with screen='none'")
        machine.screen = Screen(machine, *DEFAULT_SIZE)     # C writes the InfoMap fields
    return machine.screen.pixels


def numbered(path, number):
    """``shot.png``, 7 -> ``shot-000007.png``: where PngRecorder saves frame ``number``."""
    stem, suffix = os.path.splitext(path)
    return f"{stem}-{number:06d}{suffix or '.png'}"


class PngRecorder:
    """Saves the screen every ``every_ms`` ms as numbered PNG files (see :func:`numbered`)
    from a background thread, until :meth:`stop`."""

    def __init__(self, screen, path, every_ms):
        if every_ms <= 0:
            raise ArgumentError(f"--screen-png-every: expected a positive number of ms, got {every_ms}")
        self.screen, self.path, self.interval = screen, path, every_ms / 1000.0
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="baremetal-png", daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.wait(self.interval):
            self.screen.save_png(numbered(self.path, self.frames), compress_level=1)
            self.frames += 1

    def stop(self):
        self._stop.set()
        self._thread.join()


def display_available():
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


HEADLESS_DRIVERS = ("offscreen", "dummy", "evdev")    # SDL drivers that show no window


def _display_name():
    return os.environ.get("WAYLAND_DISPLAY") or os.environ.get("DISPLAY") or ""


class Window:
    """A live window (pygame) showing the screen; key presses are written to ``key_fd`` (the
    write end of the pipe the machine's b_input reads).  Runs in its own thread (every SDL
    call is made from it); closing the window stops showing frames, the app goes on."""

    FPS = 30

    def __init__(self, screen, key_fd, title="baremetal"):
        if not display_available():
            raise ArgumentError("--window needs a display, and neither DISPLAY nor WAYLAND_DISPLAY "
                                "is set (use --screen-png FILE to see the screen without one)")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        if os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            os.environ.setdefault("SDL_VIDEODRIVER", "x11")   # X only: no try at Wayland first
        try:
            import pygame  # noqa: F401
        except ImportError:
            raise ArgumentError("--window needs pygame: pip install pygame") from None
        self.screen, self.key_fd, self.title = screen, key_fd, title
        self.keys_sent = 0
        self.error = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="baremetal-window", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            raise ArgumentError(f"--window: cannot open a window on display {_display_name()!r}: "
                                f"{self.error}")

    def _loop(self):
        import pygame
        try:
            pygame.display.init()
            # SDL falls back to a driver that draws nowhere when it cannot reach the display
            # (a wrong DISPLAY, an X server that refused us): a run that asked for a window
            # would go on silently without one
            driver = pygame.display.get_driver()
            if driver in HEADLESS_DRIVERS:
                raise pygame.error(f"SDL could not reach it and fell back to its {driver!r} driver")
            pygame.display.set_caption(self.title)      # before the window exists: born with it
            surface = pygame.display.set_mode((self.screen.width, self.screen.height))
            pygame.display.set_caption(self.title)
        except pygame.error as error:
            self.error = str(error)
            self._ready.set()
            return
        self._ready.set()
        clock = pygame.time.Clock()
        frame = pygame.Surface((self.screen.width, self.screen.height), depth=32,
                               masks=(0xFF0000, 0x00FF00, 0x0000FF, 0))
        try:
            while not self._stop.is_set():
                for event in pygame.event.get():
                    if event.type == pygame.QUIT:
                        return
                    if event.type == pygame.KEYDOWN and event.unicode:
                        self._send(event.unicode)
                pygame.surfarray.blit_array(frame, self.screen.pixels.T)
                surface.blit(frame, (0, 0))
                pygame.display.flip()
                clock.tick(self.FPS)
        finally:
            pygame.display.quit()

    def _send(self, text):
        """A key as b_input sees it from a terminal: Enter is '\\n'."""
        data = text.replace("\r", "\n").encode("utf-8", "replace")
        try:
            os.write(self.key_fd, data)
            self.keys_sent += len(data)
        except OSError:
            pass

    def stop(self):
        self._stop.set()
        self._thread.join()


class Outputs:
    """What the command line asked to do with a machine's screen while and after an app runs:
    the final PNG, numbered PNGs every N ms, a live window.  A context manager around the run."""

    def __init__(self, machine, png=None, every_ms=None, window=False, key_fd=-1):
        if (png or every_ms or window) and machine.screen is None:
            raise ArgumentError("--screen-png / --screen-png-every / --window need a screen "
                                "(this run has --screen none)")
        if every_ms is not None and not png:
            raise ArgumentError("--screen-png-every needs --screen-png FILE (frames are saved as FILE-NNNNNN.png)")
        self.machine, self.png, self.every_ms = machine, png, every_ms
        self.window = Window(machine.screen, key_fd) if window else None
        self.recorder = None

    def __enter__(self):
        if self.every_ms is not None:
            self.recorder = PngRecorder(self.machine.screen, self.png, self.every_ms)
        return self

    def __exit__(self, *exc):
        if self.recorder is not None:
            self.recorder.stop()
        if self.window is not None:
            self.window.stop()
        if self.png:
            from . import signals                  # after a stop signal or --timeout too
            signals.finishing()
            self.machine.screen.save_png(self.png)
        return False
