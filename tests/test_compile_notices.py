"""A line appears while a long compilation runs, none for short ones."""

import threading

import jax
import jax.numpy as jnp

from spt_jax import compile_notices
from spt_jax.compile_notices import BACKEND_COMPILE_EVENT, CompileNotices


def test_a_long_compilation_is_announced_while_it_runs_and_when_it_ends():
  lines = []
  announced = threading.Event()
  notices = CompileNotices(after_seconds=0.05,
                           write=lambda line: (lines.append(line), announced.set()))
  notices.started(BACKEND_COMPILE_EVENT, 0.0, fun_name="jit(train_step)")
  assert announced.wait(5)  # printed before the compilation ends
  notices.ended(BACKEND_COMPILE_EVENT, 12.34, fun_name="jit(train_step)")
  assert lines == ["compiling the train step ...", "compiled the train step in 12.3 s"]


def test_a_short_compilation_and_other_events_print_nothing():
  lines = []
  notices = CompileNotices(after_seconds=30, write=lines.append)
  notices.started(BACKEND_COMPILE_EVENT, 0.0, fun_name="jit(add)")
  notices.ended(BACKEND_COMPILE_EVENT, 0.01, fun_name="jit(add)")
  notices.started("/jax/other", 0.0, fun_name="jit(add)")
  assert lines == []


def test_installed_notices_hear_jax_compilations(monkeypatch):
  notices = compile_notices.install()
  lines = []
  monkeypatch.setattr(notices, "after_seconds", 0.0)
  monkeypatch.setattr(notices, "write", lines.append)

  def program_with_a_unique_name(x):
    return jnp.sin(x) * 3

  jax.jit(program_with_a_unique_name)(jnp.arange(7.0)).block_until_ready()
  assert "compiling jit(program_with_a_unique_name) ..." in lines
  assert any(line.startswith("compiled jit(program_with_a_unique_name) in ")
             for line in lines)
