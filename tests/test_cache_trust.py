"""The C-app build cache trusts only what the user owns (issue 12, defect 3): a cache
directory or entry of another user, or one group or others may write, is refused with one
line, and a new cache is made 0700.  Real files, real ownership, a real `baremetal run`."""
import os
import stat
import subprocess
import sys

import pytest

from pybaremetal.apps import c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER_USER = 65534
SOURCE = '#include "libBareMetal.h"\nint main(void) { b_output("built here\\n", 11); return 0; }\n'


@pytest.fixture
def app(tmp_path):
    path = tmp_path / "app.c"
    path.write_text(SOURCE)
    return str(path)


def plant(cache, app):
    """What another user would leave under the app's predictable key: a shared object (any
    bytes: it must never be opened) and a matching deps.json."""
    entry = os.path.join(cache, c.cache_key([app]))
    os.makedirs(entry)
    with open(os.path.join(entry, "app.so"), "wb") as f:
        f.write(b"\x7fELF planted")
    with open(os.path.join(entry, "deps.json"), "w") as f:
        f.write("{}")
    return entry


def run(app, cache):
    env = dict(os.environ, BAREMETAL_CACHE=cache)
    return subprocess.run([sys.executable, "-m", "pybaremetal", "run", app, "--cores", "1"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_a_new_cache_is_private_to_its_user(tmp_path, app):
    cache = str(tmp_path / "new" / "cache")
    done = run(app, cache)
    assert done.returncode == 0 and done.stdout == "built here\n", done.stderr
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="planting an entry owned by another user needs root")
def test_an_entry_planted_by_another_user_is_refused(tmp_path, app):
    cache = str(tmp_path / "cache")
    os.makedirs(cache, mode=0o700)
    entry = plant(cache, app)
    for path in (entry, *(os.path.join(entry, n) for n in os.listdir(entry))):
        os.chown(path, OTHER_USER, OTHER_USER)
    done = run(app, cache)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"baremetal: error: the C-app build cache {entry} belongs to uid "
                           f"{OTHER_USER}, not you (uid 0), not trusted; remove it, or set "
                           "BAREMETAL_CACHE to a directory of your own\n")


@pytest.mark.parametrize("mode", [0o770, 0o707], ids=["group", "others"])
def test_a_cache_group_or_others_may_write_is_refused(tmp_path, app, mode, monkeypatch):
    cache = str(tmp_path / "shared")
    monkeypatch.setenv("BAREMETAL_CACHE", cache)
    os.makedirs(cache)
    os.chmod(cache, mode)
    plant(cache, app)
    with pytest.raises(c.UntrustedCache, match=f"may be written by group or others \\(mode 0{mode:o}\\)"):
        c.cached_build([app])
    os.chmod(cache, 0o700)                              # its own again: the planted entry is refused
    entry = os.path.join(cache, c.cache_key([app]))
    os.chmod(os.path.join(entry, "app.so"), 0o666)
    with pytest.raises(c.UntrustedCache, match="app.so may be written by group or others"):
        c.cached_build([app])


def test_a_symbolic_link_for_an_entry_is_refused(tmp_path, app, monkeypatch):
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("BAREMETAL_CACHE", cache)
    os.makedirs(cache, mode=0o700)
    elsewhere = plant(str(tmp_path / "elsewhere"), app)
    os.symlink(elsewhere, os.path.join(cache, c.cache_key([app])))
    with pytest.raises(c.UntrustedCache, match="is a symbolic link"):
        c.cached_build([app])
