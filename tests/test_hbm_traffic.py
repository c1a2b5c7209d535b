"""HBM traffic of compiled programs with loops counted by their trip counts."""

import jax
import jax.numpy as jnp

from spt_jax import aot

MODULE = """HloModule m, is_scheduled=true

%fused (p: f32[256]) -> f32[256] {
  %p = f32[256]{0} parameter(0)
  ROOT %e = f32[256]{0} exponential(%p)
}

%body (t: (s32[], f32[256])) -> (s32[], f32[256]) {
  %t = (s32[], f32[256]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[256]{0} get-tuple-element(%t), index=1
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %f = f32[256]{0} fusion(%x), kind=kLoop, calls=%fused
  ROOT %r = (s32[], f32[256]{0}) tuple(%next, %f)
}

%cond (t: (s32[], f32[256])) -> pred[] {
  %t = (s32[], f32[256]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[256], v: f32[256]) -> f32[256] {
  %a = f32[256]{0} parameter(0)
  %v = f32[256]{0:T(128)S(1)} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[256]{0}) tuple(%zero, %a)
  %w = (s32[], f32[256]{0}) while(%init), condition=%cond, body=%body
  %out = f32[256]{0} get-tuple-element(%w), index=1
  ROOT %sum = f32[256]{0} add(%out, %v)
}
"""


def test_loops_count_their_trips_and_other_memory_spaces_are_left_out():
  """Per trip: the fusion reads and writes 1 KiB, the counter add 3 x 4 bytes, the
  compare 2 x 4 + 1; the final add reads %out and writes 1 KiB (%v sits in VMEM)."""
  per_trip = 2 * 1024 + 3 * 4 + (2 * 4 + 1)
  assert aot.hbm_traffic(MODULE) == (5 * per_trip + 2 * 1024, 0)
  unknown = MODULE.replace("%n = s32[] constant(5)", "%n = s32[] parameter(1)")
  assert aot.hbm_traffic(unknown)[1] == 1


def test_a_scanned_program_counts_every_iteration():
  def f(x, w):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=8)[0]

  x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  text = jax.jit(f).lower(x, x).compile().as_text()
  traffic, unknown = aot.hbm_traffic(text)
  assert unknown == 0 and traffic >= 8 * 3 * 256 * 256 * 4  # c and w in, c out per trip


def test_kernel_calls_count_their_own_cost_estimate():
  line = ('  %k = f32[256]{0} custom-call(%a), custom_call_target="tpu_custom_call", '
          'backend_config={"custom_call_config": {"cost_estimate":{"flops":"9",'
          '"bytes_accessed":"123456"}}}\n')
  module = MODULE.replace("  ROOT %sum = f32[256]{0} add(%out, %v)\n",
                          line + "  ROOT %sum = f32[256]{0} add(%out, %v)\n")
  assert aot.hbm_traffic(module)[0] == aot.hbm_traffic(MODULE)[0] + 123456


def test_traffic_source_names_the_place_in_the_model():
  name = "jit(step)/transpose(jvp(Spt))/image_encoder/blocks_3/while/body/attn/dot_general"
  assert aot.traffic_source(name) == "bwd image_encoder/blocks_*/attn/dot_general"
  assert aot.traffic_source(name, depth=1) == "bwd image_encoder/dot_general"
  assert aot.traffic_source("jit(f)/tanh") == "tanh"


def test_traffic_by_source_splits_the_total():
  def f(x, w):
    with jax.named_scope("encoder"):
      x = jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=4)[0]
    with jax.named_scope("head"):
      return jnp.sin(x) @ w

  x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  text = jax.jit(f).lower(x, x).compile().as_text()
  sources, unknown = aot.hbm_traffic_by_source(text)
  assert unknown == 0 and sum(sources.values()) == aot.hbm_traffic(text)[0]
  encoder = sum(v for k, v in sources.items() if k.startswith("encoder/"))
  head = sum(v for k, v in sources.items() if k.startswith("head/"))
  assert encoder >= 4 * 3 * 256 * 256 * 4 and head >= 3 * 256 * 256 * 4, sources


SLICES = """HloModule m, is_scheduled=true

%update (p0: f32[64,256], p1: f32[1,256], p2: s32[]) -> f32[64,256] {
  %p0 = f32[64,256]{1,0} parameter(0)
  %p1 = f32[1,256]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %t = f32[1,256]{1,0} tanh(%p1)
  %z = s32[] constant(0)
  ROOT %u = f32[64,256]{1,0} dynamic-update-slice(%p0, %t, %p2, %z)
}

%read (p0: f32[64,256], p1: s32[]) -> f32[1,256] {
  %p0 = f32[64,256]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %z = s32[] constant(0)
  %s = f32[1,256]{1,0} dynamic-slice(%p0, %p1, %z), dynamic_slice_sizes={1,256}
  ROOT %e = f32[1,256]{1,0} exponential(%s)
}

ENTRY %main (a: f32[64,256], b: f32[1,256], i: s32[]) -> (f32[64,256], f32[1,256]) {
  %a = f32[64,256]{1,0} parameter(0)
  %b = f32[1,256]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %f = f32[64,256]{1,0} fusion(%a, %b, %i), kind=kLoop, calls=%update
  %g = f32[1,256]{1,0} fusion(%a, %i), kind=kLoop, calls=%read
  %h = f32[1,256]{1,0} dynamic-slice(%a, %i, %i), dynamic_slice_sizes={1,256}
  %s = ((f32[64,256]{1,0}), f32[1,256]{1,0:S(1)}, s32[]{:S(2)}) slice-start(%a), slice={[0:1], [0:256]}
  %sd = f32[1,256]{1,0:S(1)} slice-done(%s)
  ROOT %r = (f32[64,256]{1,0}, f32[1,256]{1,0}) tuple(%f, %g)
}
"""


def test_slices_and_in_place_updates_move_their_slices_only():
  """The update fusion reads its row and index and writes the row into the buffer it
  updates in place; the slicing fusion and the top-level dynamic slice read a row (and
  write it); the asynchronous slice reads a row from HBM into VMEM."""
  row, index = 256 * 4, 4
  update = (row + index) + row
  read = (row + index) + row
  top_level_slice = 2 * row
  assert aot.hbm_traffic(SLICES) == (update + read + top_level_slice + row, 0)
