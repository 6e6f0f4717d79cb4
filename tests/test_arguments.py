"""Odd arguments to the Python face raise BareMetalError subclasses; the fault log is bounded."""
import numpy as np
import pytest

import pybaremetal as bm
from pybaremetal.smp import FAULTS_KEPT


def test_a_non_contiguous_array_is_refused_by_the_drive_calls(tmp_path):
    strided = np.zeros((2, 8192), np.uint8)[:, ::2]
    with bm.Machine(cores=1, memory="16M", console="capture", input=False,
                    drives=[bm.Drive(str(tmp_path / "d.img"), create="1M")]) as m:
        def main():
            for call in (bm.b_nvs_read, bm.b_nvs_write):
                with pytest.raises(bm.NvsError, match="must be contiguous"):
                    call(strided, 0, 1)
        m.run(main)


@pytest.mark.parametrize("kwargs, error", [(dict(iid=2 ** 64), bm.NetError), (dict(iid=-1), bm.NetError),
                                           (dict(iid="0"), bm.NetError), (dict(nbytes="x"), bm.ArgumentError)])
def test_out_of_range_net_arguments_raise_bare_metal_errors(kwargs, error):
    with bm.Machine(cores=1, memory="16M", console="capture", input=False, nics=["wire"]) as m:
        def main():
            with pytest.raises(error):
                bm.b_net_tx(b"\xff" * 60, **kwargs)
            with pytest.raises(bm.ArgumentError, match="contiguous"):
                bm.b_net_tx(np.zeros(240, np.uint8)[::2])
        m.run(main)


def test_the_fault_log_keeps_the_last_ones_and_counts_them_all(capsys):
    extra = 50
    with bm.Machine(cores=1, memory="16M", console="capture", input=False) as m:
        def fail(arg):
            raise ValueError(f"task {arg}")
        for i in range(FAULTS_KEPT + extra):
            m.smp.enqueue(fail, i, block=True)
        m.smp.wait()
        faults = m.faults
        assert len(faults) == FAULTS_KEPT and m.fault_count == FAULTS_KEPT + extra
        assert f"task {extra}" in faults[0].traceback and f"task {FAULTS_KEPT + extra - 1}" in faults[-1].traceback
    capsys.readouterr()
