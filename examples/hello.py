"""Hello, world! on a hosted BareMetal machine:  baremetal run examples/hello.py"""
import pybaremetal as bm


def main():
    bm.b_output("Hello, world!\n")
    return 0
