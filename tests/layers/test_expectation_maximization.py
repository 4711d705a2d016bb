"""ExpectationMaximizationAttention against a float64 transcription of mmseg's EMAModule and
EMAHead (eval and training, the bases' update), and the update's mean over a 2-process group."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from attnblocks import ExpectationMaximizationAttention
from tests.layers.mmseg_attention_reference import ema_em, ema_mid_conv, ema_unit, mmseg_names
from tests.layers.test_spatial_blocks import randomise
from tests.reference import relative_error


def unit(channels=16, seed=0, **kwargs):
    """A unit with random weights and random, unnormalised bases (as the fixture's fill rule)."""
    block = ExpectationMaximizationAttention(channels, 6, **kwargs)
    randomise(block, seed)
    with torch.no_grad():
        block.bases.copy_(
            torch.randn(block.bases.shape, generator=torch.Generator().manual_seed(seed))
        )
    return block


def reference_state(block):
    return mmseg_names({k: v.double() for k, v in block.state_dict().items()})


def features(shape, seed=1, scale=1.0):
    return scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(1, 16, 1, 1), (3, 16, 7, 4), (2, 16, 9, 13)])
def test_eval_matches_mmseg_and_leaves_the_bases(shape):
    block = unit().eval()
    bases = block.bases.clone()
    x = features(shape)
    expected, _ = ema_unit(x.double(), reference_state(block), 3, 0.1)
    out = block(x)
    assert out.shape == x.shape
    assert relative_error(out, expected) < 1e-5
    assert torch.equal(block.bases, bases)


@pytest.mark.parametrize("num_stages", [1, 3])
def test_training_step_matches_mmseg_output_and_base_update(num_stages):
    block = unit(num_stages=num_stages, momentum=0.3).train()
    state = reference_state(block)
    x = features((3, 16, 5, 6))
    out = block(x)
    expected, bases = ema_unit(x.double(), state, num_stages, 0.3, training=True)
    assert relative_error(out, expected) < 1e-5
    assert relative_error(block.bases, bases) < 1e-6
    assert not torch.equal(block.bases.double(), state["bases"])  # it moved


def test_gradients_reach_the_input_through_the_residual_only():
    # mmseg runs EM without gradients: the reconstruction is a constant for backward.
    block = unit().eval()
    x = features((2, 16, 4, 5)).requires_grad_()
    block(x).square().sum().backward()
    state = {k: v.detach() for k, v in mmseg_names(block.state_dict()).items()}
    x_ref = x.detach().clone().requires_grad_()
    with torch.no_grad():
        feats = ema_mid_conv(x_ref, state).flatten(2)
        attention, bases = ema_em(feats, state["bases"], 3)
        recon = torch.einsum("bck,bnk->bcn", bases, attention).reshape(x.shape)
    out_conv = block.out_conv(F.relu(recon))
    F.relu(x_ref + out_conv).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert block.in_conv.weight.grad is None and not block.in_conv.weight.requires_grad


def test_gradcheck_float64_of_the_trained_parameters():
    block = unit(8, dtype=torch.float64).eval()
    x = features((2, 8, 3, 4)).double()  # fixed: EM has no gradient (see above)
    names, params = zip(*((n, p) for n, p in block.named_parameters() if p.requires_grad))
    assert set(names) == {"out_conv.conv.weight", "out_conv.norm.weight", "out_conv.norm.bias"}

    def run(*values):
        return torch.func.functional_call(block, dict(zip(names, values)), (x,), strict=False)

    params = tuple(p.detach().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(run, params)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_with_large_activations_is_finite_and_accurate(dtype):
    block = unit(seed=2).eval()
    x = features((1, 16, 6, 7), seed=2, scale=60.0)
    with torch.autocast("cpu", dtype=dtype):
        out = block(x)
    assert torch.isfinite(out).all()
    expected, _ = ema_unit(x.double(), reference_state(block), 3, 0.1)
    assert relative_error(out, expected) < 2e-2


def test_half_parameters_and_inputs_are_finite():
    block = unit(seed=4).eval().to(torch.bfloat16)
    out = block(features((1, 16, 6, 7), seed=4, scale=60.0).bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    block.train()(features((2, 16, 3, 3)).bfloat16())  # the bfloat16 buffer moves too
    assert block.bases.dtype == torch.bfloat16 and torch.isfinite(block.bases).all()


def test_attention_map_is_the_last_responsibilities():
    block = unit(seed=3).double().eval()
    x = features((2, 16, 5, 6), seed=3).double()
    weights = block.attention_map(x, [(0, 0), (4, 5)])
    assert weights.shape == (2, 2, 6)
    state = mmseg_names(block.state_dict())
    attention, _ = ema_em(ema_mid_conv(x, state).flatten(2), state["bases"], 3)
    torch.testing.assert_close(weights, attention[:, [0, 29]])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, dtype=torch.float64))


def test_initialisation_and_layout():
    block = ExpectationMaximizationAttention(32, 8)
    assert block.bases.shape == (1, 32, 8) and "bases" in block.state_dict()
    assert "bases" not in dict(block.named_parameters())
    torch.testing.assert_close(block.bases.norm(dim=1), torch.ones(1, 8))
    assert set(block.state_dict()) == {
        "bases", "in_conv.weight", "in_conv.bias", "out_conv.conv.weight", "out_conv.norm.weight",
        "out_conv.norm.bias", "out_conv.norm.running_mean", "out_conv.norm.running_var",
        "out_conv.norm.num_batches_tracked",
    }  # fmt: skip


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\], got 1.5"):
        ExpectationMaximizationAttention(16, momentum=1.5)
    with pytest.raises(ValueError, match="num_stages must be a positive int, got 0"):
        ExpectationMaximizationAttention(16, num_stages=0)
    with pytest.raises(ValueError, match="num_bases must be a positive int, got 0"):
        ExpectationMaximizationAttention(16, num_bases=0)
    with pytest.raises(ValueError, match="ExpectationMaximizationAttention was built for 16"):
        ExpectationMaximizationAttention(16)(torch.randn(1, 8, 4, 4))


GROUP_SECONDS = 120  # the two processes take a few seconds; this only catches a hang


def _train_step_in_a_group(rank, world_size, store, out_dir):
    """One training forward of the same unit on rank-specific inputs in a gloo group."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size)  # fmt: skip
    try:
        block = unit(seed=5, momentum=0.2).train()
        block(features((2, 16, 4, 5), seed=10 + rank))
        torch.save(block.bases, os.path.join(out_dir, f"bases{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_base_update_averages_the_processes_of_a_distributed_group(tmp_path):
    group = mp.spawn(_train_step_in_a_group, args=(2, str(tmp_path / "store"), str(tmp_path)),
                     nprocs=2, join=False)  # fmt: skip
    deadline = time.monotonic() + GROUP_SECONDS
    while not group.join(timeout=1):  # a hung rank fails the test instead of stalling the suite
        if time.monotonic() > deadline:
            for process in group.processes:
                process.kill()
            # (seen once on torch 2.4: rank 0 blocked in destroy_process_group)
            pytest.fail(f"the two gloo ranks did not finish within {GROUP_SECONDS} s")
    bases = [torch.load(tmp_path / f"bases{rank}.pt") for rank in range(2)]
    torch.testing.assert_close(bases[0], bases[1], rtol=0, atol=0)
    # mmseg: each process's batch mean of the final bases, averaged over processes
    # (reduce_mean), L2-normalised, then the momentum step from the shared initial bases.
    block = unit(seed=5, momentum=0.2)
    state = reference_state(block)
    means = []
    for rank in range(2):
        x = features((2, 16, 4, 5), seed=10 + rank).double()
        _, final = ema_em(ema_mid_conv(x, state).flatten(2), state["bases"], 3)
        means.append(final.mean(dim=0, keepdim=True))
    new = F.normalize((means[0] + means[1]) / 2, dim=1, p=2)
    expected = 0.8 * state["bases"] + 0.2 * new
    assert relative_error(bases[0], expected) < 1e-6
    # one process alone would have moved elsewhere
    alone = unit(seed=5, momentum=0.2).train()
    alone(features((2, 16, 4, 5), seed=10))
    assert relative_error(alone.bases, expected) > 1e-3
