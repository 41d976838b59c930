"""The one weights-cache rule: an explicit path, else torch.hub.get_dir()/<tool>, else an extra folder."""

import pytest
import torch

from stablesr.errors import WeightsNotFoundError
from stablesr.weights.cache import find_weights, hub_dir


def test_explicit_path_then_hub_subfolders_in_order_then_extra(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_dir() == tmp_path / "xdg" / "torch" / "hub"  # torch's own default, read at call time
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert hub_dir() == tmp_path / "th" / "hub"
    for sub in ("checkpoints", "pyiqa"):
        (tmp_path / "th" / "hub" / sub).mkdir(parents=True)
        (tmp_path / "th" / "hub" / sub / "w.pth").write_bytes(b"x")
    assert find_weights("w.pth", cache=("checkpoints", "pyiqa"), needed_by="X") == tmp_path / "th/hub/checkpoints/w.pth"
    assert find_weights("w.pth", cache="pyiqa", needed_by="X") == tmp_path / "th/hub/pyiqa/w.pth"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "w.pth").write_bytes(b"y")
    assert find_weights("w.pth", tmp_path / "mine", cache="pyiqa", needed_by="X") == tmp_path / "mine" / "w.pth"
    assert find_weights("w.pth", tmp_path / "mine" / "w.pth", cache="pyiqa", needed_by="X") == tmp_path / "mine/w.pth"
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "only.pt").write_bytes(b"z")
    assert find_weights("only.pt", cache="clip", extra_folders=[tmp_path / "extra"], needed_by="X") == \
        tmp_path / "extra" / "only.pt"


def test_an_explicit_path_is_not_silently_replaced_and_errors_say_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    (tmp_path / "th" / "hub" / "pyiqa").mkdir(parents=True)
    (tmp_path / "th" / "hub" / "pyiqa" / "w.pth").write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError, match=r"MANIQA needs its checkpoint w\.pth, not found at .*elsewhere"):
        find_weights("w.pth", tmp_path / "elsewhere", cache="pyiqa", needed_by="MANIQA needs its checkpoint")
    with pytest.raises(WeightsNotFoundError, match=r"none\.pth, not found in .*th/hub/pyiqa; put the file in"):
        find_weights("none.pth", cache="pyiqa", needed_by="Y needs")


def test_torch_hub_set_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored afterwards, so TORCH_HOME rules again
    torch.hub.set_dir(str(tmp_path / "custom"))
    assert hub_dir() == tmp_path / "custom"
