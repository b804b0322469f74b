"""Stop signals: raised as Interrupted, or recorded for a loop to act on; handlers restored afterwards."""

import os
import signal

import pytest

from recyclelora.signals import STOP_SIGNALS, Interrupted, deferred_stop_signals, raise_on_stop_signals


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_stop_signal_raises_interrupted_with_the_shells_exit_code(signum):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as caught:
        with raise_on_stop_signals():
            os.kill(os.getpid(), signum)
    assert caught.value.signum == signum
    assert caught.value.exit_code == 128 + signum
    assert caught.value.signal_name in str(caught.value)
    assert signal.getsignal(signum) is before


def test_a_deferred_signal_is_only_recorded_first_one_wins():
    before = signal.getsignal(signal.SIGTERM)
    with deferred_stop_signals() as request:
        assert not request
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signum == signal.SIGUSR2
    assert signal.getsignal(signal.SIGTERM) is before
