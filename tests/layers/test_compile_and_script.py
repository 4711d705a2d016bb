"""PAM and CAM under torch.compile (fullgraph, every backend, dynamic sizes) and TorchScript."""

import warnings

import pytest
import torch

from attnblocks import CAM, PAM, SelfAttentionBlock
from attnblocks.functional import attention_backend
from tests.reference import relative_error

SIZES = [
    (4, 5),
    (6, 7),
    (8, 8),
    (9, 11),
    (12, 10),
    (13, 17),
    (16, 16),
    (20, 18),
    (21, 23),
    (30, 31),
]


def output_and_grads(module, x):
    x = x.detach().clone().requires_grad_()
    out = module(x)
    weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    grads = torch.autograd.grad((out * weight).sum(), [x, *module.parameters()])
    return out, grads


@pytest.mark.parametrize("backend", ["bmm", "chunked", "sdpa", "auto"])
def test_pam_compiles_as_one_graph_with_every_backend(backend):
    torch._dynamo.reset()
    pam = PAM(16, backend=backend, chunk_size=8, gamma_init=0.5)
    compiled = torch.compile(pam, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(0))
    expected_out, expected_grads = output_and_grads(pam, x)
    out, grads = output_and_grads(compiled, x)
    assert relative_error(out, expected_out) < 1e-6
    for grad, expected in zip(grads, expected_grads):
        assert relative_error(grad, expected) < 1e-5


@pytest.mark.parametrize("scoped", ["bmm", "chunked"])
def test_compiled_pam_follows_the_enclosing_attention_backend_block(scoped):
    # The block's backend is read while tracing (torch 2.11's dynamo cannot trace a ContextVar).
    torch._dynamo.reset()
    targets = []

    def recording_backend(graph_module, example_inputs):
        targets.extend(str(node.target) for node in graph_module.graph.nodes)
        return graph_module.forward

    pam = PAM(16, chunk_size=8, gamma_init=0.5)
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(0))
    with attention_backend(scoped), torch.no_grad():
        expected = pam(x)
        out = torch.compile(pam, backend=recording_backend, fullgraph=True)(x)
    assert relative_error(out, expected) < 1e-6
    chunked_ops = [target for target in targets if "attnblocks" in target]
    assert bool(chunked_ops) == (scoped == "chunked"), targets


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
def test_self_attention_block_compiles_as_one_graph_with_the_efficient_backends(backend):
    torch._dynamo.reset()
    block = SelfAttentionBlock(16, 16, 8, 16, backend=backend, chunk_size=8, zero_init_last=False)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(0))
    expected_out, expected_grads = output_and_grads(block, x)
    out, grads = output_and_grads(compiled, x)
    assert relative_error(out, expected_out) < 1e-6
    for grad, expected in zip(grads, expected_grads):
        assert relative_error(grad, expected) < 1e-5


@pytest.mark.parametrize("backend", ["chunked", "auto"])
def test_new_map_sizes_do_not_recompile_each_time(backend):
    torch._dynamo.reset()
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    pam = PAM(16, backend=backend, chunk_size=None if backend == "auto" else 8, gamma_init=0.5)
    compiled = torch.compile(pam, backend=counting_backend, fullgraph=True)
    for height, width in SIZES:
        x = torch.randn(2, 16, height, width)
        out, grads = output_and_grads(compiled, x)
        expected_out, expected_grads = output_and_grads(pam, x)
        assert relative_error(out, expected_out) < 1e-6
        assert relative_error(grads[0], expected_grads[0]) < 1e-5
    # The first size compiles a static graph, the second a dynamic one that serves the rest
    # (auto may add one where its bmm/chunked size rule flips).
    assert len(graphs) <= 3, f"{len(graphs)} graphs for {len(SIZES)} sizes"


@pytest.mark.parametrize("module_class", [PAM, CAM])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torchscript_gives_the_eager_result(module_class, dtype):
    module = module_class(16, gamma_init=0.5).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        scripted = torch.jit.script(module)
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert relative_error(scripted(x), module(x)) < tolerance
    with pytest.raises(torch.jit.Error, match=r"built for \(B, 16, H, W\) inputs"):
        scripted(torch.randn(2, 8, 5, 7).to(dtype))


@pytest.mark.skipif(
    not hasattr(torch.library, "opcheck"), reason="torch.library.opcheck: torch>=2.4"
)
def test_chunked_custom_ops_report_what_they_return():
    # Fake implementations must give the real outputs' shapes, dtypes and strides (inductor
    # plans buffers from them); PAM hands the ops permuted, non-contiguous views.
    gen = torch.Generator().manual_seed(0)
    query, key = (torch.randn(2, 4, 24, generator=gen).transpose(1, 2) for _ in range(2))
    value = torch.randn(2, 8, 24, generator=gen).transpose(1, 2)
    forward = torch.ops.attnblocks.chunked_position_attention.default
    torch.library.opcheck(forward, (query, key, value, 5))
    out, log_sum_exp = forward(query, key, value, 5)
    grad_out = torch.randn(2, 24, 8, generator=gen)
    for needs in ([True, True, True], [False, True, False]):
        torch.library.opcheck(
            torch.ops.attnblocks.chunked_position_attention_backward.default,
            (grad_out, query, key, value, out, log_sum_exp, 5, needs),
        )
