"""What an app is made of, to ship it to the nodes: the app file itself and, for a C source,
the local headers it includes (``#include "name"``, followed recursively, relative to the
including file's directory).  Headers found only in the compiler's search path (libBareMetal.h)
are every node's own."""
import os
import re

from ..apps import loader_for
from ..errors import ArgumentError

_INCLUDE = re.compile(rb'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def app_files(path):
    """({name relative to the app's directory: bytes}, the app's name) for the app at ``path``.
    Raises ArgumentError for an unknown kind, a missing file, or an include outside the app's
    directory tree."""
    loader_for(path)                                  # kind and existence, one clear error
    root = os.path.dirname(os.path.abspath(path))
    files = {}
    pending = [os.path.abspath(path)]
    while pending:
        current = pending.pop()
        name = os.path.relpath(current, root)
        if name in files:
            continue
        if name.startswith(".."):
            raise ArgumentError(f"{path}: includes {current}, outside the app's directory; "
                                "keep local headers beside the app or below it")
        with open(current, "rb") as f:
            files[name] = f.read()
        if current.endswith((".c", ".h")):
            for include in _INCLUDE.findall(files[name]):
                header = os.path.join(os.path.dirname(current), os.fsdecode(include))
                if os.path.exists(header):
                    pending.append(os.path.abspath(header))
    return files, os.path.basename(path)
