"""The `baremetal` command."""
import argparse
import os
import signal
import sys
import traceback
import warnings

from .errors import ArgumentError, BareMetalError

EPILOG = """examples:
  baremetal run examples/hello.py
  baremetal monitor --drive disk.img
  baremetal run app.py --cores 2 --memory 512M -- arg1 arg2
  baremetal run examples/ethtest.py --nic wire
  sudo baremetal run examples/pingd.py --nic packet:veth0 -- 10.0.0.2
  baremetal run examples/helloc.c
  baremetal run examples/mandelbrot.c --screen 800x600 --screen-png mandel.png
  baremetal cc app.c -o app.so -O3 -- -DDEBUG
  baremetal run examples/hello.asm --cores 2
  baremetal cc app.c -o app.app          (a flat binary for the real kernel)
"""


def _add_machine_options(parser):
    group = parser.add_argument_group("the machine")
    group.add_argument("--cores", type=int, default=None, metavar="N",
                       help="number of cores (default: one per CPU this process may use)")
    group.add_argument("--memory", default="256M", metavar="SIZE",
                       help="flat memory size, e.g. 256M, 2G (default: 256M)")
    group.add_argument("--console", default="stdout", metavar="DEST",
                       help="where b_output goes: stdout (default), stderr, or a file path")
    group.add_argument("--input", default=None, metavar="FILE",
                       help="what b_input reads (default: stdin; a terminal is put in raw mode)")
    group.add_argument("--no-pin", dest="pin", action="store_false",
                       help="do not pin each core to its own CPU")
    group.add_argument("--queue-size", type=int, default=4096, metavar="N",
                       help="capacity of the work queue, a power of two (default: 4096)")
    group.add_argument("--drive", action="append", default=[], metavar="SPEC",
                       help="attach a drive: PATH[,ro][,durable][,create=SIZE][,queue=N][,poll=US][,buffered] "
                            "(repeatable; drive numbers follow the order)")
    group.add_argument("--nic", action="append", default=[], metavar="SPEC",
                       help="attach a NIC (repeatable; interface ids follow the order): tap:NAME, "
                            "tap:@FD, packet:IFACE[,promisc][,txring], wire (loopback); "
                            "any of them ,mac=02:00:00:00:00:01")
    group.add_argument("--cpu", default=None, choices=("auto", "kvm", "emu"),
                       help="how flat binaries execute: kvm (hardware), emu (emulated CPU, runs "
                            "anywhere) or auto (kvm where ring 0 runs in hardware, else emu; default: $BAREMETAL_CPU or auto)")
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="baremetal", description="Run BareMetal programs hosted on Linux.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser(
        "run", help="boot a machine and run an app on it",
        description="Boot a machine and run APP on core 0.  Arguments after -- reach the app "
                    "(sys.argv[1:] for Python apps).  The exit code is the app's return value.")
    run.add_argument("app", metavar="APP",
                     help="the app: a .py file with a main() function, a .c source (built and "
                          "cached), a .so built by `baremetal cc`, a flat binary (.app) built "
                          "for BareMetal, or its NASM source (.asm); binaries run on --cpu")
    _add_machine_options(run)
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
    return parser


def machine_kwargs(args):
    """Machine(...) arguments from the parsed machine options."""
    return dict(cores=args.cores, memory=args.memory, console=args.console, input=args.input,
                pin=args.pin, drives=args.drive, nics=args.nic, queue_size=args.queue_size,
                screen=args.screen, cpu=args.cpu, cmdline=args.cmdline,
                gdb=args.gdb, dumpcore=args.dumpcore)


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


def cmd_cc(args, gcc_args):
    from .apps import c
    if args.print_include_dir:
        print(c.include_dir())
        return 0
    if not args.sources:
        raise ArgumentError("cc: no C sources given")
    output = args.output or os.path.splitext(os.path.basename(args.sources[0]))[0] + ".so"
    if output.lower().endswith(".app"):
        from .apps import binary
        binary.build(args.sources, output, f"-O{args.optimize}", gcc_args)
    else:
        c.build(args.sources, output, args.optimize, gcc_args)
    return 0


def cmd_run(args, app_argv):
    from .apps import loader_for
    loader = loader_for(args.app)
    if (args.gdb, args.dumpcore) != (None, None) and not loader.__name__.endswith(".binary"):
        raise ArgumentError("--gdb and --dumpcore are for flat binaries (.app, .asm); debug a C or "
                            "Python app with gdb --args python -m pybaremetal run APP (see README)")
    if args.verbose and loader.__name__.endswith(".binary"):
        from . import cpu
        print(f"baremetal: cpu: {cpu.choose(args.cpu)[1]}", file=sys.stderr)
    return boot_and_run(args, lambda machine: loader.run(machine, args.app, app_argv),
                        default_screen=getattr(loader, "DEFAULT_SCREEN", None))


def cmd_monitor(args):
    from . import monitor
    return boot_and_run(args, monitor.run)


def boot_and_run(args, runner, default_screen=None):
    """Build the machine the options describe, run ``runner(machine)`` (with the screen's PNGs
    and window, if asked for), halt; the exit code.  ``default_screen``: the app kind's screen
    when --screen is not given (C apps: 1024x768); --screen-png / --window imply 1024x768."""
    from .machine import Machine
    from .screen import Outputs
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate)
    warnings.formatwarning = lambda message, *rest, **kw: f"baremetal: warning: {message}\n"
    kwargs = machine_kwargs(args)
    if args.screen is None:
        kwargs["screen"] = default_screen or ("1024x768" if args.screen_png or args.window else None)
    keys = os.pipe() if args.window and args.input is None else None
    if keys is not None:
        kwargs["input"] = keys[0]              # b_input reads the window's key presses
    try:
        machine = Machine(**kwargs)
        try:
            with Outputs(machine, args.screen_png, args.screen_png_every, args.window,
                         keys[1] if keys else -1):
                result = runner(machine)
        except SystemExit as stop:
            result = stop.code
        except BareMetalError:
            raise
        except Exception:
            machine.halt()
            traceback.print_exc()
            return 1
        finally:
            machine.halt()
        return exit_code(result)
    finally:
        for fd in keys or ():
            os.close(fd)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    app_argv = []
    if "--" in argv:
        split = argv.index("--")
        argv, app_argv = argv[:split], argv[split + 1:]
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, app_argv)
        if args.command == "monitor":
            return cmd_monitor(args)
        if args.command == "bmfs":
            from .bmfs import BmfsError, run_command
            try:
                run_command(args.disk, args.bmfs_command, args.bmfs_args + app_argv)
            except BmfsError as error:
                print(f"baremetal bmfs: error: {error}", file=sys.stderr)
                return 1
        if args.command == "cc":
            return cmd_cc(args, app_argv)
    except BareMetalError as error:
        print(f"baremetal: error: {error}", file=sys.stderr)
        return getattr(error, "exit_status", 2)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
