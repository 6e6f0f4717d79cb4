"""The built wheel works on its own: installed into a fresh venv outside the checkout, it runs
every app kind and the tools, with its native files found as package data.

The wheel is built once (pip wheel, no build isolation: the build requirements are those of
this venv), installed with --no-deps into a new venv whose only link to this one is a .pth line
that lends it the already installed dependencies (numpy, cffi, ...): nothing is downloaded.
Every command runs from a directory outside the checkout, so the checkout cannot be imported.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin directory of the fresh venv, a work directory outside the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), ROOT], check=True, capture_output=True, cwd=str(base), timeout=300)
    (wheel,) = glob.glob(str(dist / "*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    wheel], check=True, capture_output=True, timeout=120)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "borrowed-dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # numpy, cffi, pyroute2, rich, Pillow
    work = base / "work"
    work.mkdir()
    return venv / "bin", work, wheel


def run(installed, *argv, **kwargs):
    bindir, work, _ = installed
    env = dict(os.environ, BAREMETAL_CACHE=str(work / "cache"))
    return subprocess.run([str(bindir / argv[0]), *argv[1:]], capture_output=True, text=True,
                          cwd=str(work), env=env, timeout=120, stdin=subprocess.DEVNULL, **kwargs)


def test_the_wheel_is_abi3_and_carries_its_native_files_and_license(installed):
    wheel = installed[2]
    assert os.path.basename(wheel).endswith("-cp310-abi3-linux_x86_64.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("pybaremetal/include/libBareMetal.h", "pybaremetal/flat/crt0.c",
                 "pybaremetal/flat/libBareMetal.c", "pybaremetal/flat/app.ld"):
        assert name in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read("pybaremetal-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata or "License: MIT" in metadata
    assert "Provides-Extra: window" in metadata and "Classifier: Operating System :: POSIX :: Linux" in metadata


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    done = run(installed, "python", "-c", "import pybaremetal; print(pybaremetal.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(installed[0].parent)) and ROOT not in done.stdout


def test_the_installed_wheel_runs_a_python_app(installed):
    shutil.copy(os.path.join(ROOT, "examples", "hello.py"), installed[1])
    done = run(installed, "baremetal", "run", "hello.py", "--cores", "1")
    assert done.returncode == 0 and done.stdout == "Hello, world!\n", done.stderr


def test_the_installed_wheel_builds_and_runs_a_c_app(installed):
    shutil.copy(os.path.join(ROOT, "examples", "helloc.c"), installed[1])
    done = run(installed, "baremetal", "run", "helloc.c", "--cores", "1", "--screen", "none")
    assert done.returncode == 0 and "Hello" in done.stdout, done.stderr
    include = run(installed, "baremetal", "cc", "--print-include-dir").stdout.strip()
    assert include.startswith(str(installed[0].parent)) and os.path.isfile(os.path.join(include, "libBareMetal.h"))


def test_the_installed_wheel_builds_a_flat_binary_and_runs_it(installed):
    source = installed[1] / "flat.c"
    source.write_text('#include "libBareMetal.h"\nint main(void) { b_output("flat\\n", 5); return 3; }\n')
    done = run(installed, "baremetal", "cc", "flat.c", "-o", "flat.app")
    assert done.returncode == 0 and (installed[1] / "flat.app").stat().st_size > 0, done.stderr
    done = run(installed, "baremetal", "run", "flat.app", "--cores", "1", "--exit-status", "rax")
    assert done.returncode == 3 and done.stdout == "flat\n", done.stderr


def test_the_installed_wheel_runs_the_bmfs_tool(installed):
    (installed[1] / "note.txt").write_text("kept\n")
    for argv in (("initialize", "8"), ("write", "note.txt")):
        done = run(installed, "baremetal", "bmfs", "disk.img", *argv)
        assert done.returncode == 0, done.stderr
    done = run(installed, "baremetal", "bmfs", "disk.img", "list")
    assert done.returncode == 0 and "note.txt" in done.stdout


def test_the_installed_wheel_finds_dotdot_libbaremetal_h(installed):
    """An app in a subdirectory, as in upstream's tree, includes "../libBareMetal.h"."""
    (installed[1] / "model").mkdir()
    (installed[1] / "model" / "model.c").write_text(
        '#include "../libBareMetal.h"\nint main(void) { b_output("found\\n", 6); return 0; }\n')
    done = run(installed, "baremetal", "cc", "model/model.c", "-o", "model.so")
    assert done.returncode == 0, done.stderr
