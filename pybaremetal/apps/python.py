"""Python apps: a .py file whose main() runs on core 0 of the machine."""
import importlib.util
import os
import sys

from ..errors import ArgumentError
from . import python_main, register

register(".py", __name__, "a Python module with a main() function")


def load(path):
    """Import the file at ``path`` as a fresh module and return it."""
    name = "__baremetal_app__"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise ArgumentError(f"{path}: a Python app must define main()")
    return module


def run(machine, path, argv):
    """Run the app on ``machine``: sys.argv = [path] + argv; returns main()'s return value.

    After a REBOOT the module is imported again, so the app starts from a clean state."""
    sys.argv = [path] + list(argv)
    return machine.run(lambda: python_main(load(path).main))
