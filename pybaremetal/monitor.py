"""The Monitor: BareMetal's command line, as an app on core 0 of a hosted machine.

Like upstream's, it only uses the calls: it reads keys with b_input (echoing them, since the
terminal is in raw mode), writes with b_output, reads the BMFS disk on drive 0 through
b_nvs_read, and runs loaded binaries under KVM.  At boot it runs ``init.app`` if the disk has
one.  Commands: help, ver, dir, load, exec, peek ADDR SIZE, poke ADDR VALUE,
dump ADDR COUNT SIZE, cls, shutdown.

Addresses are hex (``0x`` optional) in the app's view of memory: low addresses are physical,
0xFFFF800000000000 and up is app memory (physical 0x200000 and up).  ``poke`` writes as many
bytes as VALUE's hex digits need (1, 2, 4 or 8).  When input is a pipe or file, the Monitor
shuts the machine down at its end.
"""
import pybaremetal as bm

from . import abi, bmfs
from ._native import lib
from .apps import binary
from .cpu import AppCrashed
from .errors import BareMetalError

VERSION = "BareMetal Monitor (pybaremetal " + bm.__version__ + ")"
PROMPT = "> "
APP_VIRTUAL = abi.APP_BASE
HELP = """Commands:
  help                  this list
  ver                   version
  dir                   files on the BMFS disk (drive 0), numbered
  load                  load an app from the disk (asks for its number)
  exec                  run the loaded app
  peek ADDR SIZE        show SIZE (1, 2, 4, 8) bytes at ADDR
  poke ADDR VALUE       write VALUE at ADDR (1, 2, 4 or 8 bytes, from its hex digits)
  dump ADDR COUNT SIZE  show COUNT values of SIZE bytes from ADDR
  cls                   clear the screen
  shutdown              power off
"""


def out(text):
    bm.b_output(text)


class Monitor:
    def __init__(self, machine, drive=0):
        self.machine = machine
        self.drive = drive
        self.loaded = None                         # (name, image bytes)

    # --- input ---------------------------------------------------------------------------

    def read_line(self):
        """A line typed at the console, echoed as typed; None when input has ended."""
        chars = []
        while True:
            key = bm.b_input()
            if key == 0:
                if lib.bm_console_input_ended(self.machine._c):
                    return None if not chars else "".join(chars)
                bm.b_system(bm.DELAY, 2000)        # poll, as upstream's keyboard loop does
                continue
            if key in (0x0D, 0x0A):
                out("\n")
                return "".join(chars)
            if key in (0x08, 0x7F):
                if chars:
                    chars.pop()
                    out("\b \b")
                continue
            if 0x20 <= key < 0x7F:
                chars.append(chr(key))
                out(chr(key))

    # --- memory --------------------------------------------------------------------------

    def physical(self, address, size):
        """The physical address behind an app-view address; BareMetalError if outside memory."""
        physical = address - APP_VIRTUAL + binary.APP_PHYSICAL if address >= APP_VIRTUAL else address
        if not 0 <= physical <= self.machine.memory_size - size:
            raise BareMetalError(f"0x{address:X} is outside memory")
        return physical

    def read_value(self, address, size):
        p = self.physical(address, size)
        return int.from_bytes(self.machine.memory[p:p + size].tobytes(), "little")

    # --- the disk ------------------------------------------------------------------------

    def files(self):
        if not self.machine.drives:
            raise BareMetalError("no disk (start with --drive DISK)")
        with bmfs.Disk.on_drive(self.drive) as disk:
            return [entry for entry in disk.entries()]

    def read_file(self, entry):
        with bmfs.Disk.on_drive(self.drive) as disk:
            return disk.read(entry.name)

    # --- commands ------------------------------------------------------------------------

    def cmd_help(self):
        out(HELP)

    def cmd_ver(self):
        out(VERSION + "\n")

    def cmd_dir(self):
        entries = self.files()
        if not entries:
            out("No files\n")
        for number, entry in enumerate(entries, 1):
            out(f"{number:>2} {entry.name:<32}{entry.size:>12}\n")

    def cmd_load(self):
        entries = self.files()
        out("Enter file number: ")
        answer = self.read_line()
        try:
            entry = entries[int(answer) - 1]
            if int(answer) < 1:
                raise IndexError
        except (TypeError, ValueError, IndexError):
            out("Invalid file number\n")
            return
        self.loaded = (entry.name, self.read_file(entry))
        out(f"Loaded {entry.name} ({entry.size} bytes)\n")

    def cmd_exec(self):
        if self.loaded is None:
            out("No app loaded (use load)\n")
            return
        self.execute(*self.loaded)

    def execute(self, name, image):
        try:
            binary.execute(self.machine, image)
        except AppCrashed as crash:
            out(f"{name}: {crash}\n")

    def cmd_peek(self, address, size):
        address, size = int(address, 16), int(size)
        if size not in (1, 2, 4, 8):
            raise BareMetalError("SIZE must be 1, 2, 4 or 8")
        out(f"0x{self.read_value(address, size):0{2 * size}X}\n")

    def cmd_poke(self, address, value):
        digits = value[2:] if value.lower().startswith("0x") else value
        size = next(n for n in (1, 2, 4, 8) if len(digits) <= 2 * n or n == 8)
        address, number = int(address, 16), int(digits, 16)
        if number >= 1 << (8 * size):
            raise BareMetalError("VALUE does not fit in 8 bytes")
        p = self.physical(address, size)
        self.machine.memory[p:p + size] = list(number.to_bytes(size, "little"))

    def cmd_dump(self, address, count, size):
        address, count, size = int(address, 16), int(count), int(size)
        if size not in (1, 2, 4, 8) or count < 1:
            raise BareMetalError("COUNT must be positive and SIZE 1, 2, 4 or 8")
        self.physical(address, count * size)
        per_line = max(1, 16 // size)
        for first in range(0, count, per_line):
            line = address + first * size
            values = [self.read_value(line + i * size, size) for i in range(min(per_line, count - first))]
            out(f"0x{line:016X}: " + " ".join(f"{v:0{2 * size}X}" for v in values) + "\n")

    def cmd_cls(self):
        out("\x1b[2J\x1b[H")

    def cmd_shutdown(self):
        bm.b_system(bm.SHUTDOWN)

    # --- the loop --------------------------------------------------------------------------

    def run_init(self):
        """Run init.app from the disk, if there is one."""
        if not self.machine.drives:
            return
        try:
            init = next((e for e in self.files() if e.name == "init.app"), None)
        except BareMetalError:
            return                                  # not a BMFS disk: no init.app
        if init is not None:
            self.execute(init.name, self.read_file(init))

    def main(self):
        out(VERSION + "\n")
        self.run_init()
        while True:
            out(PROMPT)
            line = self.read_line()
            if line is None:
                out("\n")
                bm.b_system(bm.SHUTDOWN)
            words = line.split()
            if not words:
                continue
            command = getattr(self, "cmd_" + words[0].lower(), None)
            if command is None:
                out(f"Unknown command: {words[0]} (try help)\n")
                continue
            try:
                command(*words[1:])
            except TypeError:
                out(f"Usage: {next(l.strip() for l in HELP.splitlines() if l.strip().startswith(words[0].lower()))}\n")
            except ValueError:
                out("Numbers are hex for addresses and values, decimal for sizes and counts\n")
            except BareMetalError as error:
                out(f"Error: {error}\n")


def run(machine, drive=0):
    """Boot ``machine`` and run the Monitor on core 0 until shutdown."""
    monitor = Monitor(machine, drive)
    return machine.run(monitor.main)
