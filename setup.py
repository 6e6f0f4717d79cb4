"""pybaremetal: BareMetal apps hosted on Linux.  `pip install .` builds the C core with cffi."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class build_py_with_header(build_py):
    """Also install native/libBareMetal.h as pybaremetal/include/libBareMetal.h, where
    `baremetal cc --print-include-dir` finds it (a source checkout uses native/ directly)."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "pybaremetal", "include")
        self.mkpath(target)
        self.copy_file(os.path.join("native", "libBareMetal.h"), os.path.join(target, "libBareMetal.h"))

setup(
    name="pybaremetal",
    version="0.1.0",
    description="Run BareMetal (Return Infinity) programs hosted on Linux: C core, pinned cores, "
                "O_DIRECT drives, TAP/AF_PACKET NICs",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pybaremetal", "pybaremetal.*"]),
    setup_requires=["cffi>=1.16"],
    cffi_modules=["native/build.py:ffibuilder"],
    install_requires=["cffi>=1.16", "numpy>=1.24", "pyroute2>=0.7", "rich>=13", "Pillow>=10",
                      # unicorn: the emulated CPU for flat binaries (pybaremetal/cpu/emu.py)
                      "unicorn>=2.0,<3"],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "pygame>=2.1"],
        "window": ["pygame>=2.1"],
        "numba": ["numba>=0.59"],
    },
    entry_points={"console_scripts": ["baremetal = pybaremetal.cli:main"]},
    cmdclass={"build_py": build_py_with_header},
    zip_safe=False,
)
