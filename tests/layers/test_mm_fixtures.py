"""CrissCrossAttention, NonLocal2d and ContextBlock reproduce mmcv 2.1.0's outputs and gradients.

mmcv's weights load through ``attnblocks.compat.load_mmcv_state_dict``.
"""

from __future__ import annotations

import pytest
import torch

from attnblocks import ContextBlock, CrissCrossAttention, NonLocal2d
from attnblocks.compat import load_mmcv_state_dict, mmcv_key_map
from tests.layers.mm_reference import load_arrays, manifest, mmcv_state_dict, run_fixture
from tests.reference import relative_error

FIXTURES = sorted(name for name in manifest() if not name.startswith("mmseg"))
# Biases whose true gradient is 0: a key bias shifts a query's energies alike (softmax ignores
# it), the mask bias shifts every pooling logit alike. Each is checked against its weight's.
TRUE_ZERO = {"key_conv.bias": "key_conv.weight", "phi.bias": "phi.weight",
             "conv_mask.bias": "conv_mask.weight"}  # fmt: skip


def build(name: str, backend: str | None = None) -> torch.nn.Module:
    config = manifest()[name]
    if name == "criss_cross":
        module = CrissCrossAttention(config["in_channels"])
    elif name.startswith("nonlocal"):
        extra = {} if backend is None else {"backend": backend}
        module = NonLocal2d(
            config["in_channels"], reduction=config["reduction"], mode=config["mode"],
            sub_sample=config["sub_sample"], use_scale=config["use_scale"], **extra,
        )  # fmt: skip
    else:
        module = ContextBlock(
            config["in_channels"], ratio=config["ratio"], pooling=config["pooling_type"],
            fusion=config["fusion_types"],
        )  # fmt: skip
    load_mmcv_state_dict(module, mmcv_state_dict(name))  # strict
    return module


def mmcv_names(module: torch.nn.Module, mmcv_keys: list[str]) -> dict[str, str]:
    """Our key -> mmcv's, each mmcv key renamed alone by the module's table."""
    table = mmcv_key_map(module)
    return {next(iter(table.convert({key: torch.zeros(())}))): key for key in mmcv_keys}


def cases():
    for name in FIXTURES:
        softmax = name.startswith(("nonlocal_embedded", "nonlocal_gaussian"))
        for backend in ("bmm", "chunked", "sdpa") if softmax else (None,):
            yield pytest.param(name, backend, id=name if backend is None else f"{name}-{backend}")


@pytest.mark.parametrize("name, backend", list(cases()))
def test_reproduces_mmcv(name, backend):
    arrays = load_arrays(name)
    module = build(name, backend)
    out, x = run_fixture(module, arrays)
    assert relative_error(out, arrays["output"]) < 1e-4
    if "grad_input" not in arrays:
        # mmcv's concatenation mode cannot run backward (in-place division of a ReLU output):
        # its gradients are checked against a float64 transcription in test_non_local.py.
        assert name.startswith("nonlocal_concatenation")
        return
    assert relative_error(x.grad, arrays["grad_input"]) < 1e-4
    mmcv_name = mmcv_names(module, [key for key, _ in manifest()[name]["keys"]])
    grads = {n: p.grad for n, p in module.named_parameters()}
    assert grads.keys() == mmcv_name.keys()
    for param, grad in grads.items():
        reference = arrays["grad." + mmcv_name[param]]
        if param in TRUE_ZERO and not name.startswith("nonlocal_dot"):
            scale = grads[TRUE_ZERO[param]].norm()
            assert grad.norm() < 1e-5 * scale and reference.norm() < 1e-5 * scale, param
        elif param == "gamma":
            # gamma's gradient sums 2 x 64 x 13 x 17 terms w * attended that cancel to ~0.47:
            # mmcv's float32 sum is itself 2.4e-4 off the float64 value, so compare against
            # the size of the terms, |sum| <= sum |terms|.
            terms = (arrays["weight_for_loss"] * (out.detach() - x.detach()) / module.gamma).abs()
            assert (grad - reference).abs() < 1e-4 * terms.sum()
        else:
            assert relative_error(grad, reference) < 1e-4, param


def test_criss_cross_gamma_gradient_matches_float64():
    """The gamma gradient above, against our own float64 run: closer than mmcv's float32."""
    arrays = load_arrays("criss_cross")
    module = build("criss_cross")
    run_fixture(module, arrays)
    double = build("criss_cross").double()
    doubles = {key: value.double() for key, value in arrays.items()}
    out, x = run_fixture(double, doubles)
    # the sum of terms of total size ~2e4 cancels to ~0.47 (above): float32's error depends
    # on the summation order (the thread count), so it is bounded against the terms' size
    # (measured 2e-9 and 4e-9 of it with 2 and 1 threads)
    terms = (doubles["weight_for_loss"] * (out.detach() - x.detach()) / double.gamma).abs()
    assert (module.gamma.grad.double() - double.gamma.grad).abs() < 1e-7 * terms.sum()
