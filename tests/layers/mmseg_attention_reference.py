"""Float64-ready transcriptions of mmseg 1.2.2's self-attention family on mmseg's key names.

Written from ``mmseg/models/utils/self_attention_block.py`` and the ANN, ISA and EMA
decode heads, with plain torch ops and the full ``N_q x N_k`` matrices; BatchNorm in
eval mode unless ``training``. Our modules' state dicts reach them through
:func:`mmseg_names` (conv-norm-act's ``norm`` is mmcv ConvModule's ``bn``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: mmseg SelfAttentionBlock's settings in attnblocks' defaults (the tests' configs change them)
SELF_ATTENTION_DEFAULTS = dict(
    share_key_query=False,
    key_query_num_convs=1,
    key_query_norm=True,
    value_out_num_convs=1,
    value_out_norm=False,
    matmul_norm=True,
    with_out=True,
    query_downsample=None,
    key_downsample=None,
)
ANN_STAGE = dict(SELF_ATTENTION_DEFAULTS)  # one ConvModule key/query conv, plain value/out
ISA_RELATION = dict(SELF_ATTENTION_DEFAULTS, key_query_num_convs=2, with_out=False)


def mmseg_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of ours under mmseg's names: conv-norm-act's ``norm`` is ``bn``."""
    return {key.replace(".norm.", ".bn."): value for key, value in state.items()}


def conv_module(state, prefix, x, act=True, training=False, padding=0):
    """mmcv's ConvModule(conv without bias, BN, ReLU if ``act``) at ``prefix``."""
    x = F.conv2d(x, state[f"{prefix}.conv.weight"], padding=padding)
    bn = [state[f"{prefix}.bn.{leaf}"] for leaf in ("running_mean", "running_var", "weight",
                                                    "bias")]  # fmt: skip
    if training:  # batch statistics; the running ones are left alone (copies)
        bn[0], bn[1] = bn[0].clone(), bn[1].clone()
    x = F.batch_norm(x, *bn, training=training)
    return F.relu(x) if act else x


def project(state, prefix, x, num_convs, with_norm):
    """mmseg's ``build_project``: ConvModules or plain Conv2d, one or an ``nn.Sequential``."""
    for index in range(num_convs):
        name = prefix if num_convs == 1 else f"{prefix}.{index}"
        if with_norm:
            x = conv_module(state, name, x)
        else:
            x = F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"])
    return x


def pyramid_pool(x: Tensor, scales) -> Tensor:
    """mmseg's PPMConcat: adaptive average pools, flattened, concatenated."""
    return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in scales], dim=2)


def self_attention(query_feats, key_feats, state, channels, prefix="", **settings):
    """mmseg's ``SelfAttentionBlock.forward`` (settings as its constructor's, defaults above)."""
    cfg = {**SELF_ATTENTION_DEFAULTS, **settings}
    kq = cfg["key_query_num_convs"], cfg["key_query_norm"]
    vo = cfg["value_out_num_convs"], cfg["value_out_norm"]
    # mmseg's query_project IS its key_project when shared (one module under two names)
    query_name = "key_project" if cfg["share_key_query"] else "query_project"
    query = project(state, f"{prefix}{query_name}", query_feats, *kq)
    if cfg["query_downsample"] is not None:
        query = cfg["query_downsample"](query)
    # mmseg reshapes the context to the query input's size, which only works unpooled (its
    # releases); with a query pool this transcription keeps the pooled size.
    height, width = query.shape[-2:]
    key = project(state, f"{prefix}key_project", key_feats, *kq)
    value = project(state, f"{prefix}value_project", key_feats, *vo)
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
        context = project(state, f"{prefix}out_project", context, *vo)
    return context


def afnb(low, high, state, channels, key_pool_scales, num_stages=1):
    """mmseg's AFNB: summed stages (high queries, pooled low keys), ConvModule without act."""
    pool = lambda t: pyramid_pool(t, key_pool_scales)  # noqa: E731
    priors = [
        self_attention(high, low, state, channels, f"stages.{i}.", key_downsample=pool)
        for i in range(num_stages)
    ]
    context = torch.stack(priors, dim=0).sum(dim=0)
    return conv_module(state, "bottleneck", torch.cat([context, high], 1), act=False)


def apnb(x, state, channels, key_pool_scales, num_stages=1):
    """mmseg's APNB: summed shared-key/query stages on ``x``, ConvModule with act."""
    pool = lambda t: pyramid_pool(t, key_pool_scales)  # noqa: E731
    priors = [
        self_attention(
            x, x, state, channels, f"stages.{i}.", key_downsample=pool, share_key_query=True
        )
        for i in range(num_stages)
    ]
    context = torch.stack(priors, dim=0).sum(dim=0)
    return conv_module(state, "bottleneck", torch.cat([context, x], 1))


def isa_relation(x, state, channels, prefix):
    """mmseg's ISA SelfAttentionBlock: self-attention without out_project, output_project."""
    context = self_attention(x, x, state, channels, prefix, **{
        k: v for k, v in ISA_RELATION.items() if k not in ("query_downsample", "key_downsample")
    })  # fmt: skip
    return conv_module(state, f"{prefix}output_project", context)


def interlaced_sparse_attention(x, state, channels, down_factor):
    """ISA from its definition, with explicit loops over groups (no reshape tricks).

    Pad with zeros to multiples of ``down_factor`` (``pad // 2`` before, the rest after),
    long range: the pixels at each offset ``(i, j)`` of the local grid, i.e.
    ``x[..., i::loc_h, j::loc_w]``, attend among themselves; short range: each
    ``loc_h x loc_w`` window attends within itself; crop.
    """
    _, _, height, width = x.shape
    loc_h, loc_w = down_factor
    pad_h = math.ceil(height / loc_h) * loc_h - height
    pad_w = math.ceil(width / loc_w) * loc_w - width
    top, left = pad_h // 2, pad_w // 2
    x = F.pad(x, (left, pad_w - left, top, pad_h - top))
    out = torch.zeros_like(x)
    for i in range(loc_h):
        for j in range(loc_w):
            out[:, :, i::loc_h, j::loc_w] = isa_relation(
                x[:, :, i::loc_h, j::loc_w], state, channels, "global_relation."
            )
    x, out = out, torch.zeros_like(out)
    for row in range(0, x.shape[2], loc_h):
        for col in range(0, x.shape[3], loc_w):
            window = x[:, :, row : row + loc_h, col : col + loc_w]
            out[:, :, row : row + loc_h, col : col + loc_w] = isa_relation(
                window, state, channels, "local_relation."
            )
    return out[:, :, top : top + height, left : left + width]


def ema_em(feats, bases, num_stages):
    """The EM steps of mmseg's ``EMAModule.forward`` on ``feats`` ``(B, C, N)`` from the
    ``(1, C, K)`` buffer: the last ``(attention (B, N, K), bases (B, C, K))``."""
    bases = bases.repeat(feats.shape[0], 1, 1)
    for _ in range(num_stages):
        attention = torch.einsum("bcn,bck->bnk", feats, bases)
        attention = F.softmax(attention, dim=2)
        attention_normed = F.normalize(attention, dim=1, p=1)
        bases = torch.einsum("bcn,bnk->bck", feats, attention_normed)
        bases = F.normalize(bases, dim=1, p=2)
    return attention, bases


def ema_module(feats, bases, num_stages, momentum, training):
    """mmseg's ``EMAModule.forward``: ``(reconstruction, new bases buffer)``.

    ``reduce_mean`` is the identity here (one process); the distributed test averages
    the processes' batch means itself.
    """
    batch_size, channels, height, width = feats.size()
    feats = feats.view(batch_size, channels, height * width)
    buffer = bases
    attention, bases = ema_em(feats, bases, num_stages)
    feats_recon = torch.einsum("bck,bnk->bcn", bases, attention)
    feats_recon = feats_recon.view(batch_size, channels, height, width)
    if training:
        bases = bases.mean(dim=0, keepdim=True)
        bases = F.normalize(bases, dim=1, p=2)
        buffer = (1 - momentum) * buffer + momentum * bases
    return feats_recon, buffer


def ema_mid_conv(x, state, prefix=""):
    """EMAHead's ``ema_mid_conv`` (our unit's ``in_conv``): a 1x1 conv with bias."""
    return F.conv2d(x, state[f"{prefix}in_conv.weight"], state[f"{prefix}in_conv.bias"])


def ema_unit(x, state, num_stages, momentum, training=False, prefix=""):
    """EMAHead from ``ema_mid_conv`` to ``relu(identity + recon)``, on our unit's key names
    made mmseg's by :func:`mmseg_names` (``in_conv``, ``bases``, ``out_conv.bn``):
    ``(output, new bases buffer)``."""
    feats = ema_mid_conv(x, state, prefix)
    recon, bases = ema_module(feats, state[f"{prefix}bases"], num_stages, momentum, training)
    recon = conv_module(state, f"{prefix}out_conv", F.relu(recon), act=False, training=training)
    return F.relu(x + recon), bases
