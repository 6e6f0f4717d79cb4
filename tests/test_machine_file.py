"""Machine files (TOML: `baremetal run -c`, Machine.from_file) and --stats-json."""
import json
import os
import subprocess
import sys

import pytest

import pybaremetal as bm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MACHINE = """
cores = 2
memory = 64
pin = false
queue_size = 64

[drives.boot]
path = "boot.img"
create = "1M"

[drives.data]
path = "data.img"
durable = true
create = 2

[nics.lan]
spec = "wire"
mac = "02:00:00:00:00:09"
"""


@pytest.fixture
def machine_file(tmp_path):
    path = tmp_path / "machine.toml"
    path.write_text(MACHINE)
    return path


def test_from_file_builds_the_machine_the_file_describes(machine_file, tmp_path):
    m = bm.Machine.from_file(machine_file, console="capture", input=False)
    try:
        assert m.num_cores == 2 and m.memory_size == 64 << 20 and m.smp.queue_size == 64
        assert m.drive_ids == {"boot": 0, "data": 1} and m.nic_ids == {"lan": 0}
        assert [str(d.path) for d in m.drives] == [str(tmp_path / "boot.img"), str(tmp_path / "data.img")]
        assert m.drives[1].durable and not m.drives[0].durable
        assert os.path.getsize(tmp_path / "data.img") == 2 << 20     # create = 2 is MiB
        assert m.nics[0].mac == 0x020000000009
    finally:
        m.halt()


def test_arguments_override_the_file_and_devices_come_after_its_own(machine_file, tmp_path):
    extra = tmp_path / "extra.img"
    m = bm.Machine.from_file(machine_file, cores=1, memory="32M", console="capture", input=False,
                             drives=[f"{extra},create=1M"], nics=["wire"])
    try:
        assert m.num_cores == 1 and m.memory_size == 32 << 20
        assert [os.path.basename(str(d.path)) for d in m.drives] == ["boot.img", "data.img", "extra.img"]
        assert len(m.nics) == 2 and m.nic_ids == {"lan": 0}
    finally:
        m.halt()


@pytest.mark.parametrize("text, said", [
    ("cores = 2\ncolour = 'red'\n", "unknown key 'colour' (top-level keys: cores, memory"),
    ("[drives.data]\npath = 'd.img'\nspeed = 3\n", "[drives.data]: unknown key 'speed'"),
    ("[drives.data]\ndurable = true\n", "[drives.data]: needs path"),
    ("[nics.lan]\nmac = '02:00:00:00:00:01'\n", "[nics.lan]: needs spec"),
    ("drives = 3\n", "drives are tables: [drives.NAME]"),
    ("cores = \n", "not valid TOML"),
])
def test_mistakes_in_a_machine_file_name_the_file_and_the_key(tmp_path, text, said):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(bm.ArgumentError, match="machine file .*bad.toml: ") as caught:
        bm.Machine.from_file(path)
    assert said in str(caught.value)


def baremetal(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pybaremetal", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60, stdin=subprocess.DEVNULL)


APP = """import pybaremetal as bm

def task(arg):
    pass

def main():
    m = bm.current_machine()
    for i in range(40):
        m.smp.enqueue(task, i, block=True)
    m.smp.wait()
    bm.b_nvs_write(bytearray(8192), 0, 2, drive=m.drive_ids["data"])
    bm.b_net_tx(b"\\xff" * 6 + b"\\x02" + b"\\0" * 5 + b"\\xab\\xba" + b"x" * 46, m.nic_ids["lan"])
    bm.b_output(f"{m.num_cores} {m.memory_size >> 20} {len(m.drives)}\\n")
    return 3
"""


def test_run_with_a_machine_file_and_stats_json(machine_file, tmp_path):
    (tmp_path / "app.py").write_text(APP)
    done = baremetal("run", "app.py", "-c", str(machine_file), "--memory", "32", "--drive",
                     "extra.img,create=1", "--stats-json", "stats.json", cwd=tmp_path)
    assert done.returncode == 3 and done.stdout == "2 32 3\n", done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["app"] == "app.py" and stats["exit_code"] == 3 and stats["faults"] == 0
    assert stats["machine"]["cores"] == 2 and stats["machine"]["memory_bytes"] == 32 << 20
    assert sum(core["tasks_run"] for core in stats["cores"]) == 40
    assert stats["cores"][0]["busy_s"] is None and isinstance(stats["cores"][1]["busy_s"], float)
    data = stats["drives"][1]
    assert data["name"] == "data" and data["writes"] == 1 and data["sectors_written"] == 2
    assert [d["name"] for d in stats["drives"]] == ["boot", "data", None]
    lan = stats["nics"][0]
    assert lan["name"] == "lan" and lan["kind"] == "wire" and lan["tx_packets"] == 1
    assert set(stats["timings_s"]) == {"setup", "run", "halt", "total"}
    assert all(value >= 0 for value in stats["timings_s"].values())


def test_stats_json_is_written_when_the_app_fails(tmp_path):
    (tmp_path / "app.py").write_text("def main():\n    raise KeyError('oops')\n")
    done = baremetal("run", "app.py", "--cores", "1", "--stats-json", "stats.json", cwd=tmp_path)
    assert done.returncode == 1 and "KeyError" in done.stderr
    assert json.loads((tmp_path / "stats.json").read_text())["exit_code"] == 1


def test_cli_mistakes_with_machine_files_and_stats_are_one_line(tmp_path):
    for argv, said in ((["-c", "missing.toml"], "machine file missing.toml: No such file"),
                       (["--stats-json", "/nonexistent/s.json"], "--stats-json: cannot use the directory")):
        done = baremetal("run", os.path.join(ROOT, "examples", "hello.py"), *argv, cwd=tmp_path)
        assert done.returncode == 2 and said in done.stderr and done.stderr.count("\n") == 1, done.stderr
