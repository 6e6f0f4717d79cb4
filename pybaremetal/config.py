"""Machine files: a machine described in TOML, for ``baremetal run -c machine.toml`` and
:meth:`pybaremetal.Machine.from_file`.

    cores = 2
    memory = "512M"            # a number (512) or a string without a unit is MiB
    queue_size = 4096
    screen = "800x600"

    [drives.boot]              # drive 0
    path = "disk.img"

    [drives.data]              # drive 1
    path = "data.img"
    durable = true
    create = "64M"

    [nics.lan]                 # interface 0
    spec = "tap:tap0"
    mac = "02:00:00:00:00:01"

Top-level keys are the Machine's own arguments (``cores``, ``memory``, ``console``, ``input``,
``pin``, ``queue_size``, ``screen``, and any a newer Machine takes).  Each ``[drives.NAME]``
table takes a Drive's fields (``path``, ``read_only``, ``durable``, ``create``, ``direct``,
``queue_depth``, ``poll_us``); each ``[nics.NAME]`` a ``spec`` (as ``--nic`` takes) and an
optional ``mac``.  Names map to drive numbers and interface ids in the order they are written;
``machine.drive_ids`` and ``machine.nic_ids`` hold the mapping.  Relative paths are relative
to the file's directory.  Every mistake raises ArgumentError naming the file and the key.
"""
import dataclasses
import inspect
import os

from .errors import ArgumentError

try:
    import tomllib
except ImportError:                              # Python 3.10: the same parser, as a package
    import tomli as tomllib


def _machine_parameters():
    from .machine import Machine
    return [name for name in inspect.signature(Machine.__init__).parameters if name != "self"]


def _mib(value):
    """A size from the file: a number is MiB (as everywhere on the command line)."""
    return f"{value}M" if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _relative_to(base, path):
    return path if os.path.isabs(path) else os.path.join(base, path)


def _drive(where, base, table):
    from .nvs import Drive
    fields = [f.name for f in dataclasses.fields(Drive)]
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ArgumentError(f"{where}: unknown key {unknown[0]!r} (a drive takes {', '.join(fields)})")
    if not isinstance(table.get("path"), str) or not table["path"]:
        raise ArgumentError(f"{where}: needs path = \"FILE\"")
    table = dict(table, path=_relative_to(base, table["path"]))
    if "create" in table:
        table["create"] = _mib(table["create"])
    return Drive(**table)


def _nic(where, table):
    unknown = sorted(set(table) - {"spec", "mac"})
    if unknown:
        raise ArgumentError(f"{where}: unknown key {unknown[0]!r} (a NIC takes spec and mac)")
    spec = table.get("spec")
    if not isinstance(spec, str) or not spec:
        raise ArgumentError(f"{where}: needs spec = \"tap:NAME\" (or tap:@FD, packet:IFACE, wire)")
    mac = table.get("mac")
    return spec if mac is None else f"{spec},mac={mac}"


def load(path):
    """``(kwargs, drive_names, nic_names)`` from the machine file at ``path``: Machine keyword
    arguments (drives and NICs as lists, in file order) and the names in that order."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as error:
        raise ArgumentError(f"machine file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ArgumentError(f"machine file {path}: not valid TOML: {error}") from None
    base = os.path.dirname(os.path.abspath(path))
    allowed = [p for p in _machine_parameters() if p not in ("drives", "nics")]
    kwargs = {}
    for key, value in data.items():
        if key in ("drives", "nics"):
            continue
        if key not in allowed:
            raise ArgumentError(f"machine file {path}: unknown key {key!r} (top-level keys: "
                                f"{', '.join(allowed)}; devices go in [drives.NAME] and [nics.NAME])")
        if key in ("console", "input", "trace") and isinstance(value, str) and value not in ("stdout", "stderr"):
            value = _relative_to(base, value)
        if key == "memory":
            value = _mib(value)
        kwargs[key] = value
    devices = {}
    for kind in ("drives", "nics"):
        tables = data.get(kind, {})
        if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
            raise ArgumentError(f"machine file {path}: {kind} are tables: [{kind}.NAME]")
        devices[kind] = tables
    kwargs["drives"] = [_drive(f"machine file {path}: [drives.{name}]", base, table)
                        for name, table in devices["drives"].items()]
    kwargs["nics"] = [_nic(f"machine file {path}: [nics.{name}]", table)
                      for name, table in devices["nics"].items()]
    return kwargs, list(devices["drives"]), list(devices["nics"])


def name_devices(machine, drive_names, nic_names):
    """Give ``machine`` the name -> id mappings ``drive_ids`` and ``nic_ids``."""
    machine.drive_ids = {name: number for number, name in enumerate(drive_names)}
    machine.nic_ids = {name: number for number, name in enumerate(nic_names)}
    return machine


def machine_from_file(cls, path, overrides):
    """``cls(**file's arguments, **overrides)`` with the file's device names attached;
    ``drives``/``nics`` in ``overrides`` are added after the file's."""
    kwargs, drive_names, nic_names = load(path)
    overrides = dict(overrides)
    for kind in ("drives", "nics"):
        extra = overrides.pop(kind, None) or []
        kwargs[kind] = kwargs[kind] + ([extra] if isinstance(extra, str) else list(extra))
    kwargs.update(overrides)
    return name_devices(cls(**kwargs), drive_names, nic_names)
