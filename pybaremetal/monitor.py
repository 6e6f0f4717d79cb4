"""The Monitor: BareMetal's command line, as an app on core 0 of a hosted machine.

What a user sees is byte for byte what upstream's Monitor (BareMetal-Monitor 1.0) shows on the
real kernel's serial console, for every command upstream has: help, ver, dir, load, loadr,
exec, peek, poke, dump, cls, test, shutdown (case-sensitive, as upstream).  That means:

- Output (the Monitor's, and that of apps it runs) goes to the console as the kernel's serial
  driver sends it: each line feed becomes CR LF and the Monitor's cursor-left code (0x03) a
  backspace (0x08); the Monitor installs that output function with STDOUT_SET.  A clear screen
  is the byte 0x01 (the Monitor's own code; a serial terminal shows nothing for it).
- Input is read key by key with b_input, whose keys are upstream's: Enter 0x1C, Backspace 0x0E
  (native/io.c).  Printable keys (32..126) are echoed, up to 100 per line; Enter echoes a space
  (the Monitor overwrites its cursor) and Backspace "\\b \\b".  Words are separated by spaces.
- Numbers are read as upstream reads them: hex (addresses, and dump's count and size too)
  up to the first character that is not a hex digit, decimal for load's file number.  `poke`
  writes 1, 2, 4 or 8 bytes for a value of 2, 4, 8 or 16 characters; other lengths are
  invalid.  peek prints the value's hex digits; dump prints the address, ": " and values each
  followed by a space (and, for bytes, " | " and the characters).
- Messages: "Unknown command", "Insufficient argument(s)", "Too many arguments",
  "Invalid argument(s)", "No filesystem detected".

Where upstream has undefined behaviour, the hosted Monitor says "Invalid argument(s)" instead:
an address outside the machine's memory (upstream faults), a dump count of 0 (upstream
dumps without end), a file number 0 or over 64 (upstream reads outside its table).  `loadr`
loads from the RAM drive a loader can leave at 0x410000; a hosted machine has none, so after
its prompt it always says "Invalid argument(s)", and `dir` shows only the BMFS disk.

The BMFS disk is drive 0, found at sector 0 (a disk made by `bmfs`) or, as upstream looks for
it, at sector 32768 (after the 128 MiB UEFI partition of a BareMetal-OS disk).  `load` reads
the file's sectors to the app address 0xFFFF800000000000 (physical 0x200000); `exec` runs what
was loaded as a flat binary on core 0.  At boot an `init.app` on the disk is loaded and run.

Hosted additions, which change nothing upstream would show: an app that crashes under `exec`
is reported on one line and the Monitor goes on (upstream's machine stops); when the input is a
pipe or a file, the Monitor shuts the machine down at its end (upstream waits for keys).
"""
import pybaremetal as bm

from . import abi
from .apps import binary
from .cpu import kvm
from .errors import BareMetalError

ENTER, BACKSPACE, CURSOR_LEFT, CLEAR_SCREEN = 0x1C, 0x0E, 0x03, 0x01
LINE_MAX = 100                                   # characters ui_input accepts for a command
PROGRAM = abi.APP_BASE                           # ProgramLocation: where load puts a file
BMFS_SECTORS = (0, 32768)                        # where the BMFS disk starts on drive 0
SECTOR = abi.SECTOR_SIZE
RECORD = 64                                      # one BMFS directory record
KERNEL_FREE_MIB = 0x110104                       # the kernel's MemAmount word the banner shows

HELP = ("Available commands:\n"
        "cls  - clear the screen\n"
        "dir  - Show programs currently on disk\n"
        "load - Load a program to memory (you will be prompted for the program number)\n"
        "exec - Run the program currently in memory\n"
        "ver  - Show the system version\n"
        "peek - hex mem address and bytes (1, 2, 4, or 8) - ex \"peek 200000 8\" to read 8 bytes\n"
        "poke - hex mem address and hex value (1, 2, 4, or 8 bytes) - ex \"poke 200000 00ABCDEF\" "
        "to write 4 bytes\n"
        "dump - hex mem address, hex amount, bytes (1, 2, 4, or 8) - ex \"dump 100000 10 4\"")
VERSION = "1.0"
PROMPT = "> "
LOAD_PROMPT = "Enter file number: "
UNKNOWN = "Unknown command"
NO_FS = "No filesystem detected"
INSUFFICIENT = "Insufficient argument(s)"
TOO_MANY = "Too many arguments"
INVALID = "Invalid argument(s)"
DIR_HEADER = "BMFS\n#       Name            Size\n-----------------------------"
VALUES_PER_LINE = {1: 16, 2: 8, 4: 4, 8: 2}


class InvalidArgument(BareMetalError):
    """A command's argument the Monitor answers with "Invalid argument(s)"."""


def serial(data):
    """``data`` (str or bytes) as the kernel's serial b_output sends it: LF -> CR LF, 0x03 -> BS."""
    if isinstance(data, str):
        data = data.encode("latin-1")
    return data.replace(b"\n", b"\r\n").replace(bytes([CURSOR_LEFT]), b"\b")


def out(data):
    bm.b_output(data.encode("latin-1") if isinstance(data, str) else data)


def serial_console():
    """An output function for STDOUT_SET that sends what it is given to the machine's console
    as the kernel's serial driver would (keep a reference while it is installed)."""
    from ._native import ffi, lib

    @ffi.callback("void(*)(const char *, unsigned long long)")
    def send(text, count):
        data = serial(ffi.buffer(text, count)[:])
        lib.bm_default_output(data, len(data))
    return send


def hex_number(word):
    """upstream's hex_string_to_int: the leading hex digits of ``word`` (none: 0), 64 bits."""
    value = 0
    for char in word:
        if char not in "0123456789abcdefABCDEF":
            break
        value = ((value << 4) | int(char, 16)) & (2 ** 64 - 1)
    return value


def decimal_number(word):
    """upstream's string_to_int: the leading decimal digits of ``word`` (none: 0)."""
    digits = ""
    for char in word:
        if not "0" <= char <= "9":
            break
        digits += char
    return int(digits or "0")


def c_string(data, start):
    """The bytes from ``start`` up to the next NUL (or the end of ``data``)."""
    end = data.find(b"\0", start)
    return bytes(data[start:end if end >= 0 else len(data)])


class Monitor:
    def __init__(self, machine, drive=0):
        self.machine = machine
        self.drive = drive
        self.disk_start = None                   # first sector of the BMFS disk; None: no FS
        self.loaded = 0                          # bytes of the app load put at PROGRAM
        self.loaded_name = ""
        self.dump_chars = bytearray(b" " * 16)   # dump's character column, kept between dumps

    # --- keys --------------------------------------------------------------------------

    def read_line(self, limit):
        """upstream's ui_input: a line of up to ``limit`` printable characters, echoed; None
        when the input has ended (the hosted Monitor then shuts down)."""
        from ._native import lib
        chars = []
        while True:
            key = bm.b_input()
            if key == 0:
                if lib.bm_console_input_ended(self.machine._c):
                    return None
                bm.b_system(bm.DELAY, 2000)        # upstream halts until the next interrupt
            elif key == ENTER:
                out(" ")                           # overwrite the cursor
                return "".join(chars)
            elif key == BACKSPACE:
                if chars:
                    chars.pop()
                    out(bytes([CURSOR_LEFT, 0x20, CURSOR_LEFT]))
            elif 32 <= key <= 126 and len(chars) < limit:
                chars.append(chr(key))
                out(chr(key))

    # --- memory --------------------------------------------------------------------------

    def physical(self, address, size):
        """The physical address behind an address in the kernel's view (low memory is
        physical, PROGRAM and up is app memory at 0x200000); InvalidArgument if
        [address, address+size) is not inside the machine."""
        physical = address - PROGRAM + binary.APP_PHYSICAL if address >= PROGRAM else address
        if not 0 <= physical <= self.machine.memory_size - size:
            raise InvalidArgument(f"0x{address:X} is outside memory")
        return physical

    def read_value(self, address, size):
        p = self.physical(address, size)
        return int.from_bytes(self.machine.memory[p:p + size].tobytes(), "little")

    # --- the disk ------------------------------------------------------------------------

    def read_sectors(self, sector, count=1):
        buffer = bytearray(count * SECTOR)
        bm.b_nvs_read(buffer, sector, count, self.drive)
        return buffer

    def detect_filesystem(self):
        """Where the BMFS disk starts on the drive (the tag "BMFS" at byte 1024), or None."""
        for start in BMFS_SECTORS:
            try:
                if self.read_sectors(start)[1024:1028] == b"BMFS":
                    return start
            except BareMetalError:
                continue                           # no drive, or a drive too small
        return None

    def directory(self):
        """The 4 KiB directory: 64 records, as the disk holds them."""
        return self.read_sectors(self.disk_start + 1)

    def records(self):
        """The directory's records up to the first whose name starts with NUL (deleted
        records, 0x01, included, as upstream's dir shows them)."""
        table = self.directory()
        for offset in range(0, SECTOR, RECORD):
            if table[offset] == 0:
                break
            yield table, offset

    def load_record(self, table, offset):
        """Read the file of the record at ``offset`` to PROGRAM, as upstream: whole sectors."""
        name = c_string(table, offset)
        block = int.from_bytes(table[offset + 32:offset + 40], "little")
        size = int.from_bytes(table[offset + 48:offset + 56], "little")
        if size == 0:
            return
        sectors = (size + SECTOR - 1) // SECTOR
        if sectors * SECTOR > self.machine.memory_size - binary.APP_PHYSICAL:
            raise InvalidArgument(f"{name!r} does not fit in memory")
        bm.b_nvs_read(self.machine.addr(binary.APP_PHYSICAL), self.disk_start + block * 512,
                      sectors, self.drive)
        self.loaded, self.loaded_name = size, name.decode("latin-1")

    def run_loaded(self):
        """Run what load put at PROGRAM (nothing loaded: upstream's `ret` there, nothing)."""
        if not self.loaded:
            return
        image = self.machine.memory[binary.APP_PHYSICAL:binary.APP_PHYSICAL + self.loaded].tobytes()
        try:
            binary.execute(self.machine, image)
        except kvm.AppCrashed as crash:
            out(f"{self.loaded_name}: {crash}\n")

    # --- commands: each returns False when upstream prints no new line before the prompt -

    def cmd_help(self, words):
        out(HELP)

    def cmd_ver(self, words):
        out(VERSION)

    def cmd_cls(self, words):
        out(bytes([CLEAR_SCREEN]))
        return False

    def cmd_exec(self, words):
        self.run_loaded()

    def cmd_shutdown(self, words):
        bm.b_system(bm.SHUTDOWN)

    def cmd_test(self, words):
        start = bm.b_system(bm.TSC)
        bm.b_system(bm.DUMP_RAX, (bm.b_system(bm.TSC) - start) & (2 ** 64 - 1))

    def cmd_dir(self, words):
        if self.disk_start is None:
            return out(NO_FS)
        out(DIR_HEADER)
        for number, (table, offset) in enumerate(self.records(), 1):
            size = int.from_bytes(table[offset + 48:offset + 56], "little")
            out(b"\n%d\t%s\t%d" % (number, c_string(table, offset), size))

    def ask_file_number(self):
        out(LOAD_PROMPT)
        answer = self.read_line(2)
        if answer is None:
            bm.b_system(bm.SHUTDOWN)
        return decimal_number(answer) - 1

    def cmd_load(self, words):
        if self.disk_start is None:
            return out(NO_FS)
        index = self.ask_file_number()
        if not 0 <= index < SECTOR // RECORD:
            raise InvalidArgument("no such file number")
        table = self.directory()
        first = table[index * RECORD]
        if first in (0, 1) or first >= 0x80:       # upstream: a signed first byte <= 1
            raise InvalidArgument("no file with that number")
        self.load_record(table, index * RECORD)

    def cmd_loadr(self, words):
        self.ask_file_number()
        raise InvalidArgument("no RAM drive")

    def arguments(self, words, count):
        if len(words) < count:
            raise InvalidArgument(INSUFFICIENT)
        if len(words) > count:
            raise InvalidArgument(TOO_MANY)

    def cmd_peek(self, words):
        self.arguments(words, 3)
        address, size = hex_number(words[1]), hex_number(words[2])
        if size not in VALUES_PER_LINE:
            raise InvalidArgument("size")
        out(f"{self.read_value(address, size):0{2 * size}X}")

    def cmd_poke(self, words):
        self.arguments(words, 3)
        address, value = hex_number(words[1]), words[2]
        size = {2: 1, 4: 2, 8: 4, 16: 8}.get(len(value))
        if size is None:
            raise InvalidArgument("value length")
        p = self.physical(address, size)
        number = hex_number(value) & ((1 << (8 * size)) - 1)
        self.machine.memory[p:p + size] = list(number.to_bytes(size, "little"))
        return False

    def cmd_dump(self, words):
        self.arguments(words, 4)
        address, count, size = (hex_number(w) for w in words[1:4])
        if size not in VALUES_PER_LINE or count == 0:
            raise InvalidArgument("size or count")
        self.physical(address, count * size)
        per_line = VALUES_PER_LINE[size]
        lines = []
        for first in range(0, count, per_line):
            line = address + first * size
            text = b"%016X: " % line
            for i in range(min(per_line, count - first)):
                value = self.read_value(line + i * size, size)
                text += b"%0*X " % (2 * size, value)
                if size == 1:
                    char = value & 0x7F
                    self.dump_chars[i] = char if char > 32 else 0x20
            if size == 1:
                text += b" | " + bytes(self.dump_chars)
            lines.append(text)
        out(b"\n".join(lines))

    COMMANDS = {"exec": cmd_exec, "cls": cmd_cls, "dir": cmd_dir, "dump": cmd_dump,
                "ver": cmd_ver, "load": cmd_load, "loadr": cmd_loadr, "peek": cmd_peek,
                "poke": cmd_poke, "help": cmd_help, "test": cmd_test, "shutdown": cmd_shutdown}

    # --- the loop --------------------------------------------------------------------------

    def banner(self):
        """\\x01, then [cpu: N]  [mem: M MiB]  [net: MAC, MAC or N/A], as upstream's."""
        cores = self.read_value(0x5012, 2)
        mib = self.read_value(KERNEL_FREE_MIB, 4)
        macs = []
        while True:
            mac = bm.b_system(bm.NET_STATUS, 0, len(macs))
            if mac == 0:
                break
            macs.append(":".join(f"{b:02X}" for b in mac.to_bytes(6, "big")))
        net = ", ".join(macs) or "N/A"
        out(bytes([CLEAR_SCREEN]))
        out(f"[cpu: {cores}]  [mem: {mib} MiB]  [net: {net}]\n")

    def boot(self):
        """What upstream does before its first prompt: banner, a `ret` at PROGRAM, the disk,
        init.app."""
        self.banner()
        if binary.APP_PHYSICAL < self.machine.memory_size:
            self.machine.memory[binary.APP_PHYSICAL] = 0xC3
        self.disk_start = self.detect_filesystem()
        if self.disk_start is None:
            return
        for table, offset in self.records():
            if c_string(table, offset) == b"init.app":
                try:
                    self.load_record(table, offset)
                except BareMetalError as error:
                    out(f"init.app: {error}\n")
                    return
                self.run_loaded()
                return

    def command(self, line):
        """Run one command line; False when no new line goes before the next prompt."""
        words = line.split()
        out("\n")
        handler = self.COMMANDS.get(words[0])
        if handler is None:
            out(UNKNOWN)
            return True
        try:
            return handler(self, words) is not False
        except InvalidArgument as error:
            out(str(error) if str(error) in (INSUFFICIENT, TOO_MANY) else INVALID)
        except BareMetalError as error:             # a disk error under load: the hosted line
            out(INVALID if not str(error) else f"{INVALID} ({error})")
        return True

    def main(self):
        from ._native import ffi
        console = serial_console()                 # the Monitor's output, and exec'd apps'
        bm.b_system(bm.STDOUT_SET, int(ffi.cast("uintptr_t", console)))
        self.boot()
        new_line = True
        while True:
            if new_line:
                out("\n")
            out(PROMPT)
            line = self.read_line(LINE_MAX)
            if line is None:
                bm.b_system(bm.SHUTDOWN)
            if not line:
                new_line = True
                continue
            if not line.split():                   # only spaces: upstream prints one new line
                out("\n")
                new_line = True
                continue
            new_line = self.command(line)


def run(machine, drive=0):
    """Boot ``machine`` and run the Monitor on core 0 until shutdown."""
    monitor = Monitor(machine, drive)
    return machine.run(monitor.main)
