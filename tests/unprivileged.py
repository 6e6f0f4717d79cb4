"""Run a command without privileges from the tests.

As root, the command keeps uid 0 but loses every capability (setpriv clears the bounding,
inheritable and ambient sets, and the noroot securebits stop exec from granting them back):
it cannot create a TAP (CAP_NET_ADMIN), open an AF_PACKET socket (CAP_NET_RAW) or write
where its uid may not (CAP_DAC_OVERRIDE).  Unlike switching to uid 65534, it can still read
the checkout and the Python install wherever they live (a 0700 home, a mktemp -d folder).
As any other user, the command runs as it is: it has no privileges to drop.
"""
import os
import subprocess
import tempfile

DROP_ALL_CAPABILITIES = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
                         "--securebits=+noroot,+noroot_locked"]
OTHER_USER = 65534


def run_unprivileged(argv, **kwargs):
    """subprocess.run(argv) with no capabilities; text output captured."""
    prefix = DROP_ALL_CAPABILITIES if os.geteuid() == 0 else []
    return subprocess.run(prefix + list(argv), capture_output=True, text=True, timeout=60, **kwargs)


def foreign_directory():
    """A fresh directory under /tmp that belongs to another user (0755): the unprivileged
    command may read it but not write in it.  The caller removes it (shutil.rmtree)."""
    path = tempfile.mkdtemp(prefix="bm-foreign-", dir="/tmp")
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        os.chown(path, OTHER_USER, OTHER_USER)
    else:
        os.chmod(path, 0o555)                      # not root: make it unwritable for ourselves
    return path
