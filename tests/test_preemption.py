"""StopOnSignal in this process: a signal is turned into a stop at the next step, once; the handlers go back."""
import os
import signal

from copper_jax import preemption


def test_a_signal_inside_the_block_is_a_stop_at_the_next_step_and_a_second_acts_as_before():
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with preemption.StopOnSignal() as stop:
    assert not stop.due(1)
    os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next bytecode
    assert stop.due(2) and stop.signal_name == "SIGTERM"
    # The first signal put the previous handlers back: a second one is not swallowed.
    assert {s: signal.getsignal(s) for s in before} == before
  assert {s: signal.getsignal(s) for s in before} == before


def test_sigint_is_named_and_the_block_restores_handlers_when_no_signal_came():
  before = signal.getsignal(signal.SIGINT)
  with preemption.StopOnSignal() as stop:
    assert signal.getsignal(signal.SIGINT) != before
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.due(5) and stop.signal_name == "SIGINT"
  with preemption.StopOnSignal() as stop:
    assert not stop.due(1)
  assert signal.getsignal(signal.SIGINT) == before


def test_the_message_names_the_signal_the_step_and_the_fix():
  error = preemption.Preempted("SIGTERM", 7, 12, "/w/checkpoints")
  assert str(error) == ("stopped by SIGTERM after step 7 of 12; checkpoint saved in /w/checkpoints: rerun the same "
                        "command to resume")
  assert preemption.EXIT_STATUS not in (0, 1, 2, 128 + signal.SIGTERM, 128 + signal.SIGKILL)


class _Interrupted(Exception):
  pass


def _raise_interrupted(signum, frame):
  del frame
  raise _Interrupted(signal.Signals(signum).name)


def test_signals_held_reach_their_handler_once_the_block_ends_and_not_inside_it():
  previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    finished = []
    try:
      with preemption.signals_held():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # twice: still one stop, after the block
        finished.append("inside")
      finished.append("after")
    except _Interrupted as e:
      assert str(e) == "SIGTERM"
    assert finished == ["inside"]
    assert signal.getsignal(signal.SIGTERM) is _raise_interrupted
    with preemption.signals_held():
      pass  # no signal: nothing delivered, handlers back
    assert {s: signal.getsignal(s) for s in previous} == {s: _raise_interrupted for s in previous}
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


def test_a_signal_held_inside_a_stop_block_becomes_the_stop():
  with preemption.StopOnSignal() as stop:
    with preemption.signals_held():
      os.kill(os.getpid(), signal.SIGINT)
      assert not stop.due(1)
    assert stop.due(2) and stop.signal_name == "SIGINT"
