"""Files that are not (whole) checkpoints, and releases that cannot be downloaded.

Each gets one error that names the file (or the URL) and what to do, never a raw
torch, zipfile or urllib traceback.
"""

import urllib.error

import pytest
import torch

from attnblocks.compat import read_checkpoint
from attnblocks.models import DANet, from_mmseg
from attnblocks.pretrained import MMSEG_CHECKPOINTS, load_mmseg_checkpoint

STATE = {"weight": torch.arange(3000.0).reshape(30, 100)}


@pytest.fixture(params=["zip", "legacy"])
def saved(request, tmp_path):
    """A state dict saved by torch.save, in its zip format and in the legacy pickle one."""
    path = tmp_path / "weights.pth"
    torch.save(STATE, path, _use_new_zipfile_serialization=request.param == "zip")
    return path


def test_a_whole_file_reads(saved):
    assert torch.equal(read_checkpoint(saved, "f")["weight"], STATE["weight"])


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_a_truncated_file_is_named_and_called_truncated(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated or damaged") as raised:
        read_checkpoint(saved, "DANet.from_mmseg")
    message = str(raised.value)
    assert str(saved) in message and "\n" not in message
    assert "objects besides tensors" not in message


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (b"hello, these are not weights\n", "text 'hello, these are not weights'"),
        (b"<html><body>404 Not Found</body></html>", "an HTML page saved instead of the file?"),
        (b"\x00\x01\x02\x03binary", "bytes b'\\x00\\x01\\x02\\x03binary'"),
    ],
)
def test_a_file_that_is_no_checkpoint_says_so(tmp_path, content, shown):
    path = tmp_path / "danet.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint") as raised:
        DANet.from_mmseg(path)
    message = str(raised.value)
    assert str(path) in message and shown in message
    assert "objects besides tensors" not in message


def test_an_empty_file(tmp_path):
    path = tmp_path / "danet.pth"
    path.touch()
    with pytest.raises(ValueError, match=r"danet\.pth is empty \(0 bytes\)"):
        from_mmseg(path)


def test_objects_besides_tensors_are_still_told_apart(tmp_path):
    path = tmp_path / "trainer.pth"
    torch.save({"state_dict": STATE, "step": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match=r"holds objects besides tensors.*weights_only=False"):
        read_checkpoint(path, "DANet.from_mmseg")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: every URL torch.hub opens fails as it does without a connection."""

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(torch.hub, "urlopen", unreachable)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached file


@pytest.mark.parametrize(
    "load", [from_mmseg, DANet.from_mmseg, load_mmseg_checkpoint],
    ids=["models.from_mmseg", "DANet.from_mmseg", "load_mmseg_checkpoint"],
)  # fmt: skip
def test_offline_download_says_what_failed_where_and_how_to_pass_a_file(offline, load):
    name = "danet_r50-d8_4xb2-80k_cityscapes-512x1024"
    entry = MMSEG_CHECKPOINTS[name]
    with pytest.raises(ConnectionError) as raised:
        load(name)
    message = str(raised.value)
    assert message.startswith(f"could not download the mmseg checkpoint {name!r}")
    assert "Network is unreachable" in message and entry.url in message
    assert f'from_mmseg("{entry.file_name}")' in message and "\n" not in message
    assert isinstance(raised.value.__cause__, urllib.error.URLError)
