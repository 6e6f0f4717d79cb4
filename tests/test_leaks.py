"""Boot and halt many machines with every kind of device: no file descriptor, thread or
mapping is left behind (the property the reliability probe checked over 5,000 cycles)."""
import os

import pybaremetal as bm


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _threads():
    return len(os.listdir("/proc/self/task"))


def _mappings():
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def _cycle(image, reboot):
    with bm.Machine(cores=2, memory="16M", console="capture", input=False, pin=False,
                    drives=[str(image)], nics=["wire"]) as m:
        m.run(lambda: bm.b_nvs_write(bytes(4096), 1, 1))
        if reboot:
            m.reboot()


def test_boot_halt_cycles_leave_no_fds_threads_or_mappings(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    for i in range(20):                    # warm-up: caches, Python's arenas, the build of lib
        _cycle(image, reboot=i % 2 == 0)
    before = _fds(), _threads(), _mappings()
    for i in range(300):
        _cycle(image, reboot=i % 2 == 0)
    after = _fds(), _threads(), _mappings()
    # threads or fds that earlier tests left running may end meanwhile (a count going down is
    # no leak); a leak would add at least one per cycle: 300 or more
    assert after[0] - before[0] < 5, f"file descriptors {before[0]} -> {after[0]}"
    assert after[1] - before[1] < 5, f"threads {before[1]} -> {after[1]}"
    # a leak adds at least one mapping per cycle (flat memory, stacks, rings): 300 or more;
    # malloc arenas and Python's own pools may still grow by a few dozen after the warm-up
    assert after[2] - before[2] < 150, f"mappings {before[2]} -> {after[2]}"
