"""Shared fixtures: machines whose console is captured, so tests can read what apps wrote."""
import time

import pytest

import pybaremetal as bm


@pytest.fixture
def machine():
    """A booted 1-core, 16 MiB machine with a captured console; halted after the test."""
    m = bm.Machine(cores=1, memory="16M", console="capture", input=False)
    m.boot()
    yield m
    m.halt()


def run_captured(main, **kwargs):
    """Run main on a fresh captured machine; return (result, console bytes)."""
    kwargs.setdefault("memory", "16M")
    kwargs.setdefault("cores", 1)
    kwargs.setdefault("input", False)
    with bm.Machine(console="capture", **kwargs) as m:
        result = m.run(main)
        return result, m.console.output()


def errors_on_another_thread(call, error_type):
    """Run ``call()`` on a new thread (not a core); the ``error_type`` exceptions it raised."""
    import threading
    errors = []

    def other():
        try:
            call()
        except error_type as error:
            errors.append(error)
    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    return errors


def until(condition, what, seconds=20):
    """Poll until condition() is true; fail (not a timing assertion: a hang guard)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.001)
