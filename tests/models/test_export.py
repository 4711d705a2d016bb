"""Small DANets (and a CCNet) through torch.compile, torch.export and ONNX give the eager
result; every other zoo model through torch.export and ONNX."""

import pytest
import torch

from attnblocks.models import MMSEG_MODELS, CCNet, DANet
from attnblocks.models.base import main_logits
from tests.reference import relative_error

BACKENDS = ["bmm", "chunked", "sdpa"]


def small_danet(backend):
    torch.manual_seed(0)
    model = DANet("resnet18", num_classes=5, attention_backend=backend, chunk_size=16).eval()
    for block in (model.head.attention.pam, model.head.attention.cam):
        block.gamma.data.fill_(0.5)  # make the attention count in the output
    return model, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def assert_same_outputs(outputs, expected):
    assert len(outputs) == 3
    for ours, reference in zip(outputs, expected):
        torch.testing.assert_close(torch.as_tensor(ours), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_export(backend):
    model, images = small_danet(backend)
    with torch.no_grad():
        expected = model(images)
    program = torch.export.export(model, (images,))
    with torch.no_grad():
        assert_same_outputs(program.module()(images), expected)


def test_torch_compile_as_one_graph():
    model, images = small_danet("auto")
    with torch.no_grad():
        expected = model(images)
        assert_same_outputs(torch.compile(model, fullgraph=True)(images), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_export_runs_in_onnxruntime(backend, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test extra")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (test extra)")
    model, images = small_danet(backend)
    with torch.no_grad():
        expected = model(images)
    torch.onnx.export(model, (images,), dynamo=True).save(str(tmp_path / "danet.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "danet.onnx"))
    outputs = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert_same_outputs(outputs, expected)


def test_ccnet_torch_export():
    torch.manual_seed(0)
    model = CCNet("resnet18", num_classes=5).eval()
    model.head.attention.gamma.data.fill_(0.5)  # make the attention count in the output
    images = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
        ours = torch.export.export(model, (images,)).module()(images)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(MMSEG_MODELS) - {"danet", "ccnet"}))
def test_every_zoo_model_exports_and_runs_in_onnxruntime(name, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime comes with the test extra")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (test extra)")
    backbone = "hrnet_w18_small" if name == "ocrnet" else "resnet18"
    torch.manual_seed(0)
    model = MMSEG_MODELS[name](backbone=backbone, num_classes=5).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():  # a zero-initialised last layer: make the attention count
                parameter.normal_(0.0, 0.1)
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = main_logits(model(images))
    # the ONNX exporter goes through torch.export: both programs are checked
    onnx_program = torch.onnx.export(model, (images,), dynamo=True)
    with torch.no_grad():
        exported = main_logits(onnx_program.exported_program.module()(images))
    assert relative_error(exported, expected) < 1e-5  # relative L2: the filled layers are large
    onnx_program.save(str(tmp_path / f"{name}.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / f"{name}.onnx"))
    outputs = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert relative_error(torch.as_tensor(outputs[0]), expected) < 1e-5
