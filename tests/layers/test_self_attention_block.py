"""SelfAttentionBlock against a float64 transcription of mmseg 1.2.2's forward on mmseg's keys.

The reference (``reference_self_attention``) reads mmseg's key names (``key_project.bn.*``,
``query_project.0.conv.weight``...) and computes the full ``N_q x N_k`` matrix as
``mmseg/models/utils/self_attention_block.py`` does, so a test passes only if our block's
layout and arithmetic are both mmseg's.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnblocks import SelfAttentionBlock
from tests.layers.test_spatial_blocks import randomise
from tests.reference import LargestTensor, relative_error


class Pyramid(nn.Module):
    """ANN's key pyramid (mmseg's PPMConcat): adaptive average pools, flattened, concatenated."""

    def __init__(self, scales):
        super().__init__()
        self.scales = scales

    def forward(self, x):
        return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in self.scales], dim=2)


class NoTokens(nn.Module):
    """A key downsample that leaves no key position."""

    def forward(self, x):
        return x.flatten(2)[..., :0]


# name -> (constructor keywords, key_in_channels, query_in_channels, out_channels); channels 8.
CONFIGS = {
    "ann": (dict(key_downsample=Pyramid((1, 3, 6))), 12, 16, 16),
    "isa": (dict(key_query_num_convs=2, with_out=False), 16, 16, 16),
    "ocr": (dict(key_query_num_convs=2, value_out_norm=True), 16, 16, 16),
    "shared": (dict(share_key_query=True, key_downsample=nn.MaxPool2d(2)), 16, 16, 12),
    "query_pool": (dict(query_downsample=nn.MaxPool2d(2), matmul_norm=False), 16, 16, 16),
    "plain": (dict(key_query_norm=False, value_out_num_convs=2), 12, 16, 8),
}
NAMES = sorted(CONFIGS)


def build(name, **kwargs):
    options, key_in, query_in, out = CONFIGS[name]
    return SelfAttentionBlock(key_in, query_in, 8, out, **{**options, **kwargs})


def _project(state, prefix, x, num_convs, with_norm):
    """mmseg's build_project: ConvModule(conv, bn, ReLU) or plain Conv2d, one or a Sequential."""
    for index in range(num_convs):
        name = prefix if num_convs == 1 else f"{prefix}.{index}"
        if with_norm:
            bn = [state[f"{name}.bn.{leaf}"] for leaf in ("running_mean", "running_var", "weight",
                                                          "bias")]  # fmt: skip
            x = F.relu(F.batch_norm(F.conv2d(x, state[f"{name}.conv.weight"]), *bn))
        else:
            x = F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"])
    return x


DEFAULTS = dict(
    key_query_num_convs=1,
    key_query_norm=True,
    value_out_num_convs=1,
    value_out_norm=False,
    matmul_norm=True,
    with_out=True,
    query_downsample=None,
    key_downsample=None,
)  # the block's defaults, which the configurations change


def settings(name):
    return {**DEFAULTS, **CONFIGS[name][0]}


def reference_self_attention(query_feats, key_feats, state, name, channels=8):
    """mmseg's SelfAttentionBlock.forward for configuration ``name`` in ``query_feats``'s
    dtype (``state``'s too), BN in eval mode, on mmseg's key names."""
    cfg = settings(name)
    kq = cfg["key_query_num_convs"], cfg["key_query_norm"]
    vo = cfg["value_out_num_convs"], cfg["value_out_norm"]
    query = _project(state, "query_project", query_feats, *kq)
    if cfg["query_downsample"] is not None:
        query = cfg["query_downsample"](query)
    # mmseg reshapes the context to the query input's size, which only works unpooled (its
    # releases); with a query pool this transcription keeps the pooled size.
    height, width = query.shape[-2:]
    key = _project(state, "key_project", key_feats, *kq)
    value = _project(state, "value_project", key_feats, *vo)
    if cfg["key_downsample"] is not None:
        key, value = cfg["key_downsample"](key), cfg["key_downsample"](value)
    query = query.reshape(*query.shape[:2], -1).permute(0, 2, 1)
    key = key.reshape(*key.shape[:2], -1)
    value = value.reshape(*value.shape[:2], -1).permute(0, 2, 1)
    sim_map = torch.matmul(query, key)
    if cfg["matmul_norm"]:
        sim_map = channels**-0.5 * sim_map
    context = torch.matmul(F.softmax(sim_map, dim=-1), value).permute(0, 2, 1)
    context = context.reshape(query_feats.shape[0], -1, height, width)
    if cfg["with_out"]:
        context = _project(state, "out_project", context, *vo)
    return context


def mmseg_names(state):
    """Our state dict under mmseg's names: conv-norm-act's ``norm`` is ConvModule's ``bn``."""
    return {key.replace(".norm.", ".bn."): value for key, value in state.items()}


def inputs(name, batch, height, width, seed=1, scale=1.0):
    _, key_in, query_in, _ = CONFIGS[name]
    gen = torch.Generator().manual_seed(seed)
    query = scale * torch.randn(batch, query_in, height, width, generator=gen)
    if key_in == query_in and name != "ann":
        return query, None  # self-attention: the keys are the queries' features
    return query, scale * torch.randn(batch, key_in, height + 2, width + 1, generator=gen)


def check_against_reference(block, name, query, key, tolerance):
    out = block(query, key)
    state = mmseg_names({k: v.double() for k, v in block.state_dict().items()})
    key64 = None if key is None else key.double()
    expected = reference_self_attention(
        query.double(), query.double() if key64 is None else key64, state, name
    )
    assert out.shape == expected.shape
    assert relative_error(out, expected) < tolerance


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa"])
@pytest.mark.parametrize("shape", [(1, 2, 2), (3, 7, 4), (2, 9, 13)])
def test_matches_mmseg_transcription_on_every_backend(name, backend, shape):
    block = randomise(build(name, backend=backend, chunk_size=5)).eval()
    query, key = inputs(name, *shape)
    check_against_reference(block, name, query, key, 1e-5)


def test_one_pixel_maps():
    block = randomise(build("ocr")).eval()
    query, _ = inputs("ocr", 2, 1, 1)
    check_against_reference(block, "ocr", query, None, 1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_mmsegs_layout(name):
    block = build(name)
    state = mmseg_names(block.state_dict())
    used = set()

    class Recording(dict):
        def __getitem__(self, key):
            used.add(key)
            return dict.__getitem__(self, key)

    query, key = inputs(name, 1, 4, 4)
    reference_self_attention(query, query if key is None else key, Recording(state), name)
    leftovers = {k for k in set(state) - used if not k.endswith("num_batches_tracked")}
    assert not leftovers, leftovers
    if name == "shared":  # one projection under both of mmseg's names
        assert block.query_project is block.key_project
        assert any(k.startswith("query_project.") for k in state)


def test_shared_projection_loads_the_later_copy_as_mmseg():
    block = build("shared")
    state = block.state_dict()
    state = {k: (torch.full_like(v, 2.0) if k.startswith("query_project.") and
                 v.is_floating_point() else v) for k, v in state.items()}  # fmt: skip
    block.load_state_dict(state)
    weight = block.key_project.conv.weight
    assert torch.equal(weight, torch.full_like(weight, 2.0))


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    block = randomise(build(name, dtype=torch.float64)).eval()
    query, key = inputs(name, 2, 5, 3)
    query = query.double().requires_grad_()
    key = None if key is None else key.double().requires_grad_()
    names, params = zip(*block.named_parameters())

    def run(query, key, *values):
        return torch.func.functional_call(block, dict(zip(names, values)), (query, key))

    # Random inputs keep ReLU kinks and max-pool ties away; fast mode checks random
    # directions of the Jacobian (every entry would cost thousands of forward passes).
    params = tuple(p.detach().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(run, (query, key, *params), fast_mode=True)


def test_starts_at_zero_and_timm_zero_init_last_restores_it():
    block = build("ann")
    query, key = inputs("ann", 2, 5, 6)
    assert torch.equal(block(query, key), torch.zeros(2, 16, 5, 6))
    randomise(block)
    assert block(query, key).abs().sum() > 0
    block.zero_init_last()  # what timm calls after re-initialising a model's convolutions
    assert torch.equal(block(query, key), torch.zeros(2, 16, 5, 6))
    # A normed out projection (OCR's) keeps mmseg's init: the context is not zero.
    assert build("ocr")(inputs("ocr", 1, 4, 4)[0]).abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["ann", "ocr", "query_pool"])
def test_cpu_autocast_with_large_activations_is_finite_and_accurate(name, dtype):
    block = randomise(build(name), seed=2).eval()
    query, key = inputs(name, 1, 6, 7, seed=2, scale=60.0)
    with torch.autocast("cpu", dtype=dtype):
        out = block(query, key)
    assert torch.isfinite(out).all()
    state = mmseg_names({k: v.double() for k, v in block.state_dict().items()})
    keys = query.double() if key is None else key.double()
    expected = reference_self_attention(query.double(), keys, state, name)
    assert relative_error(out, expected) < 2e-2


def test_half_parameters_and_inputs_are_finite():
    block = randomise(build("ann"), seed=4).eval().to(torch.bfloat16)
    query, key = inputs("ann", 1, 6, 7, seed=4, scale=60.0)
    out = block(query.bfloat16(), key.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_chunked_training_step_never_holds_the_n_by_n_matrix():
    block = build("isa", backend="chunked", chunk_size=32)
    x = torch.randn(1, 16, 24, 24, requires_grad=True)  # N = 576
    with LargestTensor() as probe:
        block(x).square().sum().backward()
    assert probe.largest < 576 * 576 // 8


def test_attention_map_rows_are_the_reference_softmax_rows():
    block = randomise(build("shared"), seed=3).double().eval()
    query, _ = inputs("shared", 1, 6, 8, seed=3)
    query = query.double()
    maps = block.attention_map(query, [(2, 5), (5, 0)])  # keys max-pooled to 3 x 4
    assert maps.shape == (1, 2, 3, 4)
    state = mmseg_names(block.state_dict())
    q = _project(state, "query_project", query, 1, True).flatten(2)
    k = F.max_pool2d(_project(state, "key_project", query, 1, True), 2).flatten(2)
    rows = (q.transpose(1, 2) @ k * 8**-0.5).softmax(dim=-1)[:, [2 * 8 + 5, 5 * 8 + 0]]
    torch.testing.assert_close(maps.flatten(2), rows)
    pyramid = randomise(build("ann")).attention_map(*inputs("ann", 2, 5, 6)[:1], [(0, 0)],
                                                    inputs("ann", 2, 5, 6)[1])  # fmt: skip
    assert pyramid.shape == (2, 1, 1 + 9 + 36)  # tokens of the pools 1, 3, 6
    torch.testing.assert_close(pyramid.sum(-1), torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"points \[\[3, 0\]\] lie outside the 3 x 4"):
        build("query_pool").attention_map(torch.randn(1, 16, 6, 8), [(3, 0)])


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="share_key_query needs key_in_channels == "
                                         "query_in_channels, got 8 and 16"):  # fmt: skip
        SelfAttentionBlock(8, 16, 4, 16, share_key_query=True)
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        SelfAttentionBlock(8, 8, 0, 8)
    with pytest.raises(ValueError, match="key_query_num_convs must be a positive int, got 0"):
        SelfAttentionBlock(8, 8, 4, 8, key_query_num_convs=0)
    with pytest.raises(ValueError, match=r"key_downsample must be an nn\.Module or None"):
        SelfAttentionBlock(8, 8, 4, 8, key_downsample=F.max_pool2d)
    with pytest.raises(ValueError, match="unknown attention backend 'naive'"):
        SelfAttentionBlock(8, 8, 4, 8, backend="naive")
    block = build("ann")
    with pytest.raises(ValueError, match="key_in_channels=12 != query_in_channels=16: pass key"):
        block(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match="SelfAttentionBlock key was built for 12 channels, got "
                                         "an input with 16"):  # fmt: skip
        block(torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match=r"query input must be a 4D tensor \(B, C, H, W\)"):
        block(torch.randn(16, 4, 4), torch.randn(1, 12, 4, 4))
    with pytest.raises(ValueError, match=r"batch size, got \(2, 16, 4, 4\) and \(1, 12, 4, 4\)"):
        block(torch.randn(2, 16, 4, 4), torch.randn(1, 12, 4, 4))
    with pytest.raises(ValueError, match="key must have at least one position"):
        SelfAttentionBlock(8, 8, 4, 8, key_downsample=NoTokens())(torch.randn(1, 8, 1, 3))


def test_factory_kwargs_and_norm_layer():
    block = build("ocr", device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in block.parameters())
    grouped = SelfAttentionBlock(8, 8, 4, 8, norm_layer=lambda c, **dd: nn.GroupNorm(2, c, **dd))
    assert isinstance(grouped.key_project.norm, nn.GroupNorm)
    assert grouped(torch.randn(2, 8, 3, 5)).shape == (2, 8, 3, 5)


def test_two_inputs_compile_and_export_to_the_eager_result():
    # One input (self-attention) is in tests/layers/test_blocks_export.py with the other blocks.
    block = randomise(build("ann")).eval()
    args = inputs("ann", 2, 5, 7)
    with torch.no_grad():
        expected = block(*args)
        compiled = torch.compile(block, backend="aot_eager", fullgraph=True)(*args)
        exported = torch.export.export(block, args).module()(*args)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-6)
