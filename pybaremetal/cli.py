"""The `baremetal` command."""
import argparse
import os
import signal
import sys
import time
import traceback
import warnings

from .errors import ArgumentError, BareMetalError

RUN_USAGE_HINT = "arguments for the app go after --: baremetal run APP [OPTIONS] -- ARGS"


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (what is wrong, where help is), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version():
    """The installed distribution's version, else the package's own (a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pybaremetal")
    except PackageNotFoundError:
        from . import __version__
        return __version__


EPILOG = """examples:
  baremetal run examples/hello.py
  baremetal monitor --drive disk.img
  baremetal run app.py --cores 2 --memory 512M -- arg1 arg2
  baremetal run examples/ethtest.py --nic wire
  sudo baremetal run examples/pingd.py --nic packet:veth0 -- 10.0.0.2
  baremetal run examples/pingd.py --nic socket:listen=127.0.0.1:7001 --pcap pingd.pcap -- 10.0.0.2
  baremetal run examples/helloc.c
  baremetal run examples/mandelbrot.c --screen 800x600 --screen-png mandel.png
  baremetal cc app.c -o app.so -O3 -- -DDEBUG
  baremetal run examples/hello.asm --cores 2
  baremetal cc app.c -o app.app          (a flat binary for the real kernel)
  baremetal cluster examples/cluster_primes.c --nodes 2   (one machine per Ray node)
  baremetal run app.py -c machine.toml --stats-json stats.json
  baremetal run examples/hello.asm --trace      (one line per call, on stderr)
  baremetal doctor                       (what this host offers, and fixes)
"""


class _PcapOfLastNic(argparse.Action):
    """--pcap FILE: add pcap=FILE to the --nic given just before."""

    def __call__(self, parser, namespace, value, option_string=None):
        nics = getattr(namespace, "nic", None)
        if not nics:
            parser.error("--pcap FILE follows the --nic it captures")
        nics[-1] = f"{nics[-1]},pcap={value}"


def _add_machine_options(parser):
    group = parser.add_argument_group("the machine")
    group.add_argument("-c", "--config", default=None, metavar="FILE",
                       help="a machine file (TOML: cores, memory, [drives.NAME], [nics.NAME], "
                            "...); the options below override it, --drive/--nic add devices")
    group.add_argument("--stats-json", default=None, metavar="FILE",
                       help="at exit, write the machine's counters (cores, drives, NICs) and "
                            "timings to FILE as JSON")
    group.add_argument("--trace", nargs="?", const="stderr", default=None, metavar="FILE",
                       help="write one line per call the app makes (core, call, arguments, "
                            "result, duration) to stderr, or with --trace=FILE to FILE")
    group.add_argument("--cores", type=int, default=None, metavar="N",
                       help="number of cores (default: one per CPU this process may use)")
    group.add_argument("--memory", default=None, metavar="SIZE",
                       help="flat memory size, e.g. 256M, 2G; a bare number is MiB (default: 256M)")
    group.add_argument("--console", default=None, metavar="DEST",
                       help="where b_output goes: stdout (default), stderr, or a file path")
    group.add_argument("--input", default=None, metavar="FILE",
                       help="what b_input reads (default: stdin; a terminal is put in raw mode)")
    group.add_argument("--no-pin", dest="pin", action="store_const", const=False, default=None,
                       help="do not pin each core to its own CPU")
    group.add_argument("--queue-size", type=int, default=None, metavar="N",
                       help="capacity of the work queue, a power of two (default: 4096)")
    group.add_argument("--drive", action="append", default=[], metavar="SPEC",
                       help="attach a drive: PATH[,ro][,durable][,create=SIZE][,queue=N][,poll=US][,buffered] "
                            "(repeatable; drive numbers follow the order; create=64 is 64 MiB)")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help="end the run after SECONDS, as a signal would (exit status 124)")
    group.add_argument("--nic", action="append", default=[], metavar="SPEC",
                       help="attach a NIC (repeatable; interface ids follow the order): "
                            f"{nic_kinds()}; any of them ,mac=02:00:00:00:00:01 and ,pcap=FILE")
    group.add_argument("--pcap", action=_PcapOfLastNic, metavar="FILE",
                       help="capture every frame of the NIC given just before, in pcap format "
                            "(same as --nic SPEC,pcap=FILE)")
    group.add_argument("--cpu", default=None, choices=("auto", "kvm", "emu"),
                       help="how flat binaries execute: kvm (hardware), emu (emulated CPU, runs "
                            "anywhere) or auto (kvm where ring 0 runs in hardware, else emu; "
                            "default: $BAREMETAL_CPU or auto)")
    group.add_argument("--cmdline", default=None, metavar="TEXT",
                       help="the kernel command line, a NUL-terminated string at physical 0x5A00")
    group.add_argument("--gdb", default=None, metavar="PORT",
                       help="a flat binary waits for gdb on 127.0.0.1:PORT before its first "
                            "instruction (0: any free port, printed); then gdb -ex 'target remote :PORT'")
    group.add_argument("--dumpcore", default=None, metavar="DIR",
                       help="a flat binary that crashes writes an ELF core file for gdb into DIR")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="say which CPU backend runs a flat binary, and why")
    screen = parser.add_argument_group("the screen")
    screen.add_argument("--screen", default=None, metavar="WxH|none",
                        help="frame buffer size (default: 1024x768 for C apps; none for Python "
                             "apps until they call bm.screen())")
    screen.add_argument("--screen-png", default=None, metavar="FILE",
                        help="save the final frame as a PNG file at exit")
    screen.add_argument("--screen-png-every", type=float, default=None, metavar="MS",
                        help="also save a frame every MS milliseconds, as FILE-NNNNNN.png")
    screen.add_argument("--window", action="store_true",
                        help="show the screen in a live window (needs a display and pygame); "
                             "key presses go to b_input")


def nic_kinds():
    """The NIC kinds' syntax and description, from the backends' registry."""
    from .net import describe
    return describe()


def app_kinds():
    """The app kinds' suffixes and descriptions, from the loaders' registry."""
    from .apps import describe
    return describe()


def build_parser():
    parser = Parser(
        prog="baremetal", description="Run BareMetal programs hosted on Linux.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"baremetal (pybaremetal) {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser(
        "run", help="boot a machine and run an app on it",
        description="Boot a machine and run APP on core 0.  Arguments after -- reach the app "
                    "(sys.argv[1:] for Python apps).  The exit code is the app's return value.")
    run.add_argument("app", metavar="APP",
                     help=f"the app: {app_kinds()}")
    _add_machine_options(run)
    run.add_argument("--flat", action="store_true",
                     help="build a C source as a flat binary for the real kernel and run that "
                          "(for apps that use BareMetal's own addresses, 0xFFFF800000000000 and up)")
    run.add_argument("--exit-status", choices=("zero", "rax"), default=None,
                     help="flat binaries: the exit status when the app returns: zero (default "
                          "for .app/.asm) or the low byte of RAX (default for C built with --flat)")
    run.add_argument("--load-at", type=_address, default=None, metavar="ADDRESS",
                     help="flat binaries: where the image is loaded and entered: 0x1E0000 for "
                          "BareMetal's own Monitor (built with ORG 0x1E0000); default: the app "
                          "address 0xFFFF800000000000")
    monitor = commands.add_parser(
        "monitor", help="boot a machine into the Monitor (BareMetal's command line)",
        description="Boot a machine into the Monitor: dir, load and exec apps from the BMFS disk "
                    "on drive 0 (init.app runs at boot), peek, poke, dump, shutdown.  Type help.")
    _add_machine_options(monitor)
    from .bmfs import USAGE
    bmfs = commands.add_parser(
        "bmfs", help="make, list and change BMFS disks (image files or block devices)",
        usage=USAGE, description="BareMetal File System tool; disks interchangeable with upstream's bmfs.")
    bmfs.add_argument("disk", metavar="DISK")
    bmfs.add_argument("bmfs_command", metavar="COMMAND")
    bmfs.add_argument("bmfs_args", nargs="*", metavar="ARGS")
    bmfs.add_argument("--force", action="store_true",
                      help="initialize: replace an existing file; format: erase a BMFS disk (also /force)")
    commands.add_parser(
        "doctor", help="say what this host offers (KVM, compilers, kernel settings, NIC "
                       "privileges) and how to fix what is missing",
        description="Check this host for what pybaremetal uses: KVM and the CPU backend "
                    "`--cpu auto` would pick, gcc, nasm, vm.mmap_min_addr, /dev/net/tun and "
                    "CAP_NET_ADMIN/CAP_NET_RAW, huge pages, AIO, optional Python parts.  Each "
                    "missing part comes with its fix.  Changes nothing; exits 0.")
    cc = commands.add_parser(
        "cc", help="build a C app (a shared object of the hosted API, or a flat binary)",
        description="Compile and link C sources that include libBareMetal.h into an app for "
                    "`baremetal run`: a shared object (.so), or with -o NAME.app a flat binary "
                    "for the real kernel (freestanding, linked at 0xFFFF800000000000; it runs "
                    "here under KVM too).  Arguments after -- go to gcc as they are.")
    cc.add_argument("sources", nargs="*", metavar="SOURCE", help="C source files")
    cc.add_argument("-o", dest="output", default=None, metavar="APP",
                    help="output file: NAME.so (the default: the first source's name, here) or "
                         "NAME.app for a flat binary")
    cc.add_argument("-O", dest="optimize", nargs="?", const="1", default="2", metavar="LEVEL",
                    help="optimization level, as gcc's -O (default: -O2)")
    cc.add_argument("--print-include-dir", action="store_true",
                    help="print the directory holding libBareMetal.h and exit")
    from .lab.cli import add_parser as add_lab_parser
    add_lab_parser(commands)
    from .cluster.cli import add_parser as add_cluster_parser
    add_cluster_parser(commands)
    return parser


MACHINE_DEFAULTS = dict(cores=None, memory="256M", console="stdout", input=None, pin=True,
                       queue_size=4096, screen=None, trace=None, cpu=None, cmdline=None, gdb=None,
                       dumpcore=None)


def machine_kwargs(args):
    """``(Machine(...) arguments, drive names, NIC names)`` from the machine file (-c) and
    the options: an option given overrides the file; --drive/--nic come after its devices."""
    kwargs, drive_names, nic_names = dict(MACHINE_DEFAULTS, drives=[], nics=[]), [], []
    if args.config is not None:
        from .config import load
        from_file, drive_names, nic_names = load(args.config)
        kwargs.update(from_file)
    for name in MACHINE_DEFAULTS:
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    kwargs["drives"] = kwargs["drives"] + args.drive
    kwargs["nics"] = kwargs["nics"] + args.nic
    return kwargs, drive_names, nic_names


def exit_code(result):
    """sys.exit's rules: None -> 0, an int -> itself, anything else printed and 1."""
    if result is None:
        return 0
    if isinstance(result, int) and not isinstance(result, bool):
        return result & 0xFF
    print(result, file=sys.stderr)
    return 1


def _terminate(signum, frame):
    """SIGTERM ends the run like an app's sys.exit: the machine halts (drives flushed)."""
    raise SystemExit(128 + signum)


CC_SUFFIXES = (".c", ".s", ".o", ".a", ".cpp", ".cc", ".cxx")   # compared lower-case: .S too


def check_output_path(path, option):
    """ArgumentError (one line) unless the file ``path`` can be written: checked before the
    app runs, so a typo does not cost a whole run."""
    if not path:
        raise ArgumentError(f"{option}: empty path; give a file name")
    if os.path.isdir(path):
        raise ArgumentError(f"{option}: {path} is a directory; give a file name in it")
    parent = os.path.dirname(path) or "."
    try:
        os.stat(parent)
    except OSError as error:
        raise ArgumentError(f"{option}: cannot use the directory {parent}: {error.strerror}; "
                            "create it or give another path") from None
    writable = os.access(path, os.W_OK) if os.path.exists(path) else os.access(parent, os.W_OK | os.X_OK)
    if not writable:
        raise ArgumentError(f"{option}: {path} cannot be written (permission denied); give a "
                            "path you may write")


def report_lost_output(machine, console, result):
    """One line when b_output's output was lost (a full disk, /dev/full): the exit code
    becomes 1 if it was 0, as `echo hi > /dev/full` fails."""
    from .io import lost_output
    lost, errno_ = lost_output(machine)
    if not lost:
        return result
    print(f"baremetal: error: {lost} bytes of console output to {console} were lost "
          f"({os.strerror(errno_)}); give another --console", file=sys.stderr)
    return result or 1


def _snapshot(machine):
    """The machine's counters, or None (with one line) if they cannot be read."""
    from . import stats
    try:
        return stats.snapshot(machine)
    except BareMetalError as error:
        print(f"baremetal: warning: --stats-json: {error}", file=sys.stderr)
        return None


def _timings(clock):
    """Seconds spent building the machine, running (boot and app), halting, in all."""
    done = time.monotonic()
    built = clock.get("built", clock["start"])
    return {"setup": built - clock["start"], "run": clock["ran"] - built,
            "halt": done - clock["ran"], "total": done - clock["start"]}


def cmd_cc(args, gcc_args):
    from .apps import c
    if args.print_include_dir:
        print(c.include_dir())
        return 0
    if not args.sources:
        raise ArgumentError("cc: no C sources given (baremetal cc app.c -o app.so)")
    for source in args.sources:
        suffix = os.path.splitext(source)[1].lower()
        if suffix == ".py":
            raise ArgumentError(f"cc: {source} is a Python app, which needs no build: "
                                f"baremetal run {source}")
        if suffix not in CC_SUFFIXES:
            raise ArgumentError(f"cc: {source} is not a C source; give .c files (or .cpp, .s, .S, .o, .a)")
    output = args.output or os.path.splitext(os.path.basename(args.sources[0]))[0] + ".so"
    if output.lower().endswith(".app"):
        from .apps import binary
        binary.build(args.sources, output, f"-O{args.optimize}", gcc_args)
    else:
        c.build(args.sources, output, args.optimize, gcc_args)
    return 0


def _address(text):
    """An address option's value: decimal or 0x hex."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r} (give e.g. 0x1E0000)") from None


def cmd_run(args, app_argv):
    from .apps import binary, c, loader_for
    loader = loader_for(args.app)
    if (args.gdb, args.dumpcore) != (None, None) and not (loader is binary or args.flat):
        raise ArgumentError("--gdb and --dumpcore are for flat binaries (.app, .asm); debug a C or "
                            "Python app with gdb --args python -m pybaremetal run APP (see README)")
    if args.verbose and (loader is binary or args.flat):
        from . import cpu
        print(f"baremetal: cpu: {cpu.choose(args.cpu)[1]}", file=sys.stderr)
    if args.load_at is not None and (loader is not binary or args.flat):
        raise ArgumentError("--load-at is for flat binaries (.app, .bin, .asm)")
    run = lambda machine: loader.run(machine, args.app, app_argv)            # noqa: E731
    if args.flat:
        run = lambda machine: c.run_flat(machine, args.app, app_argv, args.exit_status)  # noqa: E731
        loader = binary
    elif loader is binary:
        run = lambda machine: binary.exit_status(loader.run(machine, args.app, app_argv, args.load_at),  # noqa: E731
                                                 args.exit_status or "zero")
    return boot_and_run(args, run, default_screen=getattr(loader, "DEFAULT_SCREEN", None))


def cmd_monitor(args):
    from . import monitor
    return boot_and_run(args, monitor.run)


def boot_and_run(args, runner, default_screen=None):
    """Build the machine the options describe, run ``runner(machine)`` (with the screen's PNGs
    and window, if asked for), halt; the exit code.  ``default_screen``: the app kind's screen
    when --screen is not given (C apps: 1024x768); --screen-png / --window imply 1024x768."""
    from .machine import Machine
    from .screen import Outputs
    from . import signals
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate)
    warnings.formatwarning = lambda message, *rest, **kw: f"baremetal: warning: {message}\n"
    kwargs, drive_names, nic_names = machine_kwargs(args)
    if kwargs["console"] == "capture":
        raise ArgumentError("--console capture is for Machine(console='capture') in Python; "
                            "here give stdout, stderr or a file path")
    for path, option in ((args.screen_png, "--screen-png"), (args.stats_json, "--stats-json")):
        if path is not None:
            check_output_path(path, option)
    if kwargs["screen"] is None:
        kwargs["screen"] = default_screen or ("1024x768" if args.screen_png or args.window else None)
    keys = os.pipe() if args.window and kwargs["input"] is None else None
    if keys is not None:
        kwargs["input"] = keys[0]              # b_input reads the window's key presses
    clock = {"start": time.monotonic()}
    try:
        try:
            machine = Machine(**kwargs)
        except OSError as error:              # a host refusal no device check put in words
            raise ArgumentError(f"cannot build the machine: {error}") from None
        from .config import name_devices
        name_devices(machine, drive_names, nic_names)
        clock["built"] = time.monotonic()
        outcome = {"status": 1}

        def finish():
            """Halt once, with the counters taken just before (--stats-json)."""
            if "ran" in clock:
                return
            clock["ran"] = time.monotonic()
            counters = _snapshot(machine) if args.stats_json else None
            machine.halt()
            if counters is not None:
                from . import stats
                stats.write(args.stats_json, counters, _timings(clock), getattr(args, "app", None),
                            outcome["status"])

        try:
            signals.arm(machine, args.timeout)     # stop signals and --timeout end native code too
            with Outputs(machine, args.screen_png, args.screen_png_every, args.window,
                         keys[1] if keys else -1):
                result = runner(machine)
            outcome["status"] = exit_code(result)
        except SystemExit as stop:
            outcome["status"] = exit_code(stop.code)
        except BareMetalError as error:
            outcome["status"] = getattr(error, "exit_status", 2)
            raise
        except Exception:
            finish()
            traceback.print_exc()
            return 1
        finally:
            stopped = signals.exit_status()        # a stop signal or the timeout sets the status
            if stopped:
                outcome["status"] = stopped
            try:
                finish()
            finally:
                signals.disarm(machine)
            if stopped:
                signals.end_process(stopped)       # halted: no interpreter teardown to wait for
        return report_lost_output(machine, kwargs["console"], outcome["status"])
    finally:
        for fd in keys or ():
            os.close(fd)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    app_argv = []
    if "--" in argv:
        split = argv.index("--")
        argv, app_argv = argv[:split], argv[split + 1:]
    argv = ["--trace=stderr" if arg == "--trace" else arg for arg in argv]   # never takes APP
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        hint = f"; {RUN_USAGE_HINT}" if args.command == "run" else ""
        parser.exit(2, f"baremetal {args.command}: error: unrecognized arguments: "
                       f"{' '.join(unknown)}{hint}\n")
    try:
        if args.command == "run":
            return cmd_run(args, app_argv)
        if args.command == "monitor":
            return cmd_monitor(args)
        if args.command == "bmfs":
            from .bmfs import BmfsError, run_command
            try:
                run_command(args.disk, args.bmfs_command,
                            args.bmfs_args + app_argv + ["--force"] * args.force)
            except BmfsError as error:
                print(f"baremetal bmfs: error: {error}", file=sys.stderr)
                return error.exit_status
        if args.command == "cc":
            return cmd_cc(args, app_argv)
        if args.command == "lab":
            from .lab.cli import run as cmd_lab
            return cmd_lab(args)
        if args.command == "cluster":
            from .cluster.cli import run as cmd_cluster
            return cmd_cluster(args, app_argv)
        if args.command == "doctor":
            from . import doctor
            return doctor.main()
    except BareMetalError as error:
        print(f"baremetal: error: {error}", file=sys.stderr)
        return getattr(error, "exit_status", 2)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:                    # `baremetal doctor | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
