"""Import mmseg with mmcv-lite: mmcv.ops (compiled) replaced by a stub; pure-PyTorch ops
loaded from their files."""

import importlib.util
import os
import sys
import types

import mmcv

ops = types.ModuleType("mmcv.ops")
ops.__path__ = []


class _Missing:
    def __init__(self, *a, **k):
        raise RuntimeError("compiled mmcv op not available")


def _getattr(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return (
        type(name, (_Missing,), {})
        if name[:1].isupper()
        else (lambda *a, **k: (_ for _ in ()).throw(RuntimeError(name)))
    )


ops.__getattr__ = _getattr
sys.modules["mmcv.ops"] = ops
mmcv.ops = ops


def load_pure(name):
    path = os.path.join(os.path.dirname(mmcv.__file__), "ops", name + ".py")
    spec = importlib.util.spec_from_file_location("mmcv.ops." + name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mmcv.ops." + name] = mod
    spec.loader.exec_module(mod)
    return mod


cc = load_pure("cc_attention")
ops.CrissCrossAttention = cc.CrissCrossAttention


# mmcv.ops.PSAMask (compiled in mmcv) as index copies, ported line by line from
# mmcv/ops/csrc/pytorch/cpu/psamask.cpp (collect = type 0, distribute = type 1); autograd
# through the index copy equals the op's backward (a pure scatter of the same pairs).
import torch  # noqa: E402 (after the stub, as the copied file had it)
from torch.nn.modules.utils import _pair  # noqa: E402


def _psamask_pairs(psa_type, n, hf, wf, hm, wm):
    half_h, half_w = (hm - 1) // 2, (wm - 1) // 2
    dst, src = [], []
    for b in range(n):
        for h in range(hf):
            for w in range(wf):
                for hidx in range(max(0, half_h - h), min(hm, hf + half_h - h)):
                    for widx in range(max(0, half_w - w), min(wm, wf + half_w - w)):
                        s = ((b * hm * wm + hidx * wm + widx) * hf + h) * wf + w
                        fh, fw = hidx + h - half_h, widx + w - half_w
                        if psa_type == 0:
                            d = (b * hf * wf + fh * wf + fw) * hf * wf + h * wf + w
                        else:
                            d = (b * hf * wf + h * wf + w) * hf * wf + fh * wf + fw
                        dst.append(d)
                        src.append(s)
    return torch.tensor(dst), torch.tensor(src)


class PSAMask(torch.nn.Module):
    def __init__(self, psa_type, mask_size=None):
        super().__init__()
        assert psa_type in ("collect", "distribute")
        self.psa_type, self.mask_size = psa_type, mask_size
        self.psa_type_enum = 0 if psa_type == "collect" else 1

    def forward(self, x):
        hm, wm = _pair(self.mask_size)
        n, c, hf, wf = x.shape
        assert c == hm * wm
        dst, src = _psamask_pairs(self.psa_type_enum, n, hf, wf, hm, wm)
        out = x.new_zeros(n * hf * wf * hf * wf)
        out = out.index_put((dst,), x.reshape(-1)[src])
        return out.view(n, hf * wf, hf, wf)


ops.PSAMask = PSAMask
