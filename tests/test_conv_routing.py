"""Routing of the convolutions flax pads by name (the 1x1 projection shortcuts), by generation
(conv3x3.CONV_ROUTING): native runs them as a strided slice and a matmul, and a run resumes on
the routing it started on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lottery_kd.kernels import conv3x3 as conv_lib
from lottery_kd.training import precision as precision_lib
from tests.routing_helpers import routing_study, write_fingerprint

pytestmark = pytest.mark.skipif(
    not conv_lib.native_available() and conv_lib._compiler() is None,
    reason="no C++ compiler: the native kernel is optional and conv_impl='auto' uses XLA")

NHWC = ("NHWC", "HWIO", "NHWC")


def _primitives(fn, *args) -> set[str]:
    return {str(e.primitive) for e in jax.make_jaxpr(fn)(*args).eqns}


def _pointwise(conv_impl, stride, padding):
    conv = conv_lib.make_conv_general_dilated(conv_impl) or lax.conv_general_dilated  # xla: None
    return lambda x, k: conv(x, k, (stride, stride), padding, dimension_numbers=NHWC)


@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (2, "VALID"),
                                            (2, [(0, 0), (0, 0)])])
def test_native_runs_unpadded_1x1_convolutions_as_matmuls_to_every_order(stride, padding):
    """Values, gradients and GraSP's gradient of the gradient equal XLA's convolution (float32
    summation order aside), on an odd size where stride 2 leaves a partial last row."""
    x = jax.random.normal(jax.random.key(0), (3, 7, 9, 16))
    kernel = jax.random.normal(jax.random.key(1), (1, 1, 16, 32)) * 0.3
    native, xla = _pointwise("native", stride, padding), _pointwise("xla", stride, padding)
    assert "conv_general_dilated" not in _primitives(native, x, kernel)
    assert "dot_general" in _primitives(native, x, kernel)

    def grad_norm(conv):
        def inner(x, k):
            return jnp.sum(jnp.tanh(conv(x, k)))
        return lambda x, k: sum(jnp.sum(g ** 2) for g in jax.grad(inner, (0, 1))(x, k))

    np.testing.assert_allclose(native(x, kernel), xla(x, kernel), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.grad(grad_norm(xla), (0, 1))(x, kernel),
                    jax.jit(jax.grad(grad_norm(native), (0, 1)))(x, kernel)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(a))))


def test_padded_1x1_and_the_legacy_routing_stay_on_xla():
    x, kernel = jnp.ones((2, 8, 8, 16)), jnp.ones((1, 1, 16, 16))
    assert "conv_general_dilated" in _primitives(_pointwise("native", 1, [(1, 1), (1, 1)]),
                                                 x, kernel)
    for legacy in (conv_lib.NATIVE_XLA_SHORTCUTS, conv_lib.AUTO_XLA_SHORTCUTS):
        assert "conv_general_dilated" in _primitives(_pointwise(legacy, 2, "SAME"), x, kernel)
    # the legacy values still run the 3x3 convolutions on the native kernel
    three = conv_lib.make_conv_general_dilated(conv_lib.NATIVE_XLA_SHORTCUTS)
    assert "custom_vjp_call" in _primitives(
        lambda x, k: three(x, k, (1, 1), [(1, 1), (1, 1)], dimension_numbers=NHWC),
        x, jnp.ones((3, 3, 16, 16)))


@pytest.mark.parametrize("record,resumes_on", [
    ({"conv_impl": "native"}, "native-xla-shortcuts"),
    ({"conv_impl": "auto"}, "auto-xla-shortcuts"),
    ({"conv_impl": "xla"}, "xla"),
    ({"conv_impl": "sparse"}, "sparse-xla-shortcuts"),
    ({"conv_impl": "sparse", "sparse_routing": 2}, "sparse"),
    ({"conv_impl": "native", "conv_routing": 3}, "native"),
    ({"conv_impl": "auto", "conv_routing": 3}, "auto"),
])
def test_a_run_resumes_on_the_routing_its_checkpoints_record(record, resumes_on):
    assert conv_lib.resumed_conv_impl(record) == resumes_on
    fresh = conv_lib.execution_record(record["conv_impl"])
    assert conv_lib.resumed_conv_impl(fresh) == record["conv_impl"]


def test_a_resume_on_another_convolution_path_is_named_in_a_warning(monkeypatch):
    """'auto' runs the 3x3 kernel only where it builds on one CPU device: a checkpoint records
    which path ran, and a resume on the other (no compiler, more devices) says so."""
    record = conv_lib.execution_record("auto")
    assert record["native"] == conv_lib.native_enabled("auto")
    assert conv_lib.path_change_note(record, "auto", "[level 1 lt]") == ""
    assert conv_lib.path_change_note({"conv_impl": "auto"}, "auto", "[x]") == ""  # older record
    monkeypatch.setattr(conv_lib, "native_enabled", lambda conv_impl: False)
    note = conv_lib.path_change_note({**record, "native": True}, "auto", "[level 1 lt]")
    assert note.startswith("warning: [level 1 lt] trained its 3x3 convolutions on the native "
                           "kernel and resumes on XLA's convolution")
    assert "bit for bit" in note


def test_a_native_study_resumes_its_run_on_the_shortcut_routing_it_began_with(tmp_path):
    """A resume checkpoint from before routing 3 finishes its run with the shortcuts on XLA;
    one from older code without any record resumes on its start's conv_impl, routed as then."""
    study = routing_study(tmp_path, "native")
    write_fingerprint(study.paths.resume("level_0_dense"), {"conv_impl": "native"})
    write_fingerprint(study.paths.resume("level_1_lt"), conv_lib.execution_record("native"))
    write_fingerprint(study.paths.resume("level_1_kd"), {})  # from before conv_impl was recorded
    assert study.run_conv_impl("level_0_dense") == conv_lib.NATIVE_XLA_SHORTCUTS
    assert study.run_conv_impl("level_1_lt") == "native"
    assert study.run_conv_impl("level_1_kd") == conv_lib.AUTO_XLA_SHORTCUTS
    assert study.run_conv_impl("level_1_kd_rewind") == "native"
    # an analysis copy (LMC, bootstrap) from before the record ran at routing 2
    copy = tmp_path / "lmc" / "checkpoints" / "k19_copy1"
    assert study.copy_conv_impl(copy) == "native"
    write_fingerprint(copy, {"model": "resnet20"}, step=7)
    assert study.copy_conv_impl(copy) == conv_lib.NATIVE_XLA_SHORTCUTS
    write_fingerprint(copy, conv_lib.execution_record("xla"), step=7)
    assert study.copy_conv_impl(copy) == "xla"
    trainer = study.make_trainer(study.data, conv_lib.NATIVE_XLA_SHORTCUTS)
    assert trainer.model.conv.keywords["conv_impl"] == conv_lib.NATIVE_XLA_SHORTCUTS


def test_bfloat16_runs_a_resumed_auto_on_xla_as_it_runs_auto():
    for value in ("auto", conv_lib.AUTO_XLA_SHORTCUTS):
        assert precision_lib.conv_impl_for(value, precision_lib.BFLOAT16) == "xla"
    assert precision_lib.conv_impl_for(conv_lib.AUTO_XLA_SHORTCUTS, "float32") == \
        conv_lib.AUTO_XLA_SHORTCUTS
