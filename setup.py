"""pybaremetal: BareMetal apps hosted on Linux.  `pip install .` builds the C core with cffi
(pyproject.toml names the build requirements)."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# native/ files an installed package needs at run time, and where they go in the package:
# libBareMetal.h for `baremetal cc` and C apps, native/flat/ for flat C builds (cc -o x.app)
PACKAGE_DATA_FROM_NATIVE = {"include": ["native/libBareMetal.h"],
                            # a directory below it: `#include "../libBareMetal.h"` (apps/c.py)
                            "include/src": ["native/libBareMetal.h"],
                            "flat": ["native/flat/app.ld", "native/flat/crt0.c",
                                     "native/flat/libBareMetal.c"]}


class build_py_with_native_data(build_py):
    """Also install native/libBareMetal.h as pybaremetal/include/ and native/flat/ as
    pybaremetal/flat/, where importlib.resources finds them in an installed package (a source
    checkout reads native/ directly)."""

    def run(self):
        super().run()
        for folder, files in PACKAGE_DATA_FROM_NATIVE.items():
            target = os.path.join(self.build_lib, "pybaremetal", folder)
            self.mkpath(target)
            for path in files:
                self.copy_file(path, os.path.join(target, os.path.basename(path)))


def long_description():
    return open("README.md").read() if os.path.exists("README.md") else ""


TEST = ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "pygame>=2.1",
        "hdrhistogram>=0.10", "matplotlib>=3.7"]                 # the lab's tests
CLUSTER = ["ray>=2.40"]             # pybaremetal.cluster; in the test extra so CI runs its tests
TEST += CLUSTER
NUMBA = ["numba>=0.59"]              # numba.cfunc tasks; in the test extra so their test runs
TEST += NUMBA

setup(
    name="pybaremetal",
    version="0.1.0",
    description="Run BareMetal (Return Infinity) programs hosted on Linux: C core, pinned cores, "
                "O_DIRECT drives, TAP/AF_PACKET NICs",
    long_description=long_description(),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    keywords=["baremetal", "exokernel", "unikernel", "kvm", "hpc"],
    project_urls={"BareMetal (upstream kernel)": "https://github.com/ReturnInfinity/BareMetal"},
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: Implementation :: CPython",
        "Topic :: System :: Emulators",
        "Topic :: System :: Operating System Kernels",
    ],
    python_requires=">=3.10",
    packages=find_packages(include=["pybaremetal", "pybaremetal.*"]),
    cffi_modules=["native/build.py:ffibuilder"],
    install_requires=["cffi>=1.16", "numpy>=1.24", "pyroute2>=0.7", "rich>=13", "Pillow>=10",
                      "tomli>=2; python_version < '3.11'",       # machine files (tomllib from 3.11)
                      # unicorn: the emulated CPU for flat binaries (pybaremetal/cpu/emu.py)
                      "unicorn>=2.0,<3"],
    extras_require={
        "test": TEST,
        "window": ["pygame>=2.1"],
        "numba": NUMBA,
        "lab": ["hdrhistogram>=0.10", "matplotlib>=3.7"],
        "cluster": CLUSTER,
    },
    entry_points={"console_scripts": ["baremetal = pybaremetal.cli:main"]},
    cmdclass={"build_py": build_py_with_native_data},
    # the C core is built against the stable ABI (cffi defines Py_LIMITED_API): one wheel
    # serves every CPython from 3.10 on
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    zip_safe=False,
)
