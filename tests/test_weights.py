"""Where pretrained weights come from: a local path, the Hugging Face hub cache (laid out as
huggingface_hub lays it out), or a download that is refused offline with how to obtain them."""

from __future__ import annotations

import pytest

from experts.weights import WeightsNotFoundError, hub_repo, locate_weights, resolve_device, resolve_dtype, weights_digest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A hub cache holding one snapshot of org/model, and no network."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--org--model"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"\0" * 64)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def test_hub_references_parse_with_and_without_revision():
    assert hub_repo("hf-hub:lingcco/fakeVLM") == ("lingcco/fakeVLM", None)
    assert hub_repo("hf-hub:org/model@v1.0") == ("org/model", "v1.0")
    assert hub_repo("/data/weights") is None


def test_a_hub_reference_resolves_to_its_cached_snapshot(hub_cache):
    assert locate_weights("hf-hub:org/model", "x", required=("config.json",)) == hub_cache
    assert locate_weights(f"hf-hub:org/model@{COMMIT}", "x") == hub_cache


def test_offline_and_uncached_says_how_to_obtain_the_weights(hub_cache):
    with pytest.raises(WeightsNotFoundError) as error:
        locate_weights("hf-hub:lingcco/fakeVLM", "fakevlm")
    message = str(error.value)
    assert "'fakevlm'" in message and "hf download lingcco/fakeVLM --local-dir DIR" in message
    assert "HF_HUB_OFFLINE" in message and "weights:" in message


def test_local_paths_and_required_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert locate_weights(tmp_path, "x", required=("config.json",)) == tmp_path
    with pytest.raises(WeightsNotFoundError, match="lacks model.safetensors"):
        locate_weights(tmp_path, "x", required=("config.json", "model.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="no weights at"):
        locate_weights(tmp_path / "absent", "x")


def test_the_digest_changes_when_a_weights_file_changes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\1" * (3 << 20))
    (tmp_path / "b.json").write_text("{}")
    first = weights_digest(tmp_path)
    assert weights_digest(tmp_path) == first
    tail_changed = bytearray((tmp_path / "a.bin").read_bytes())
    tail_changed[-1] = 2
    (tmp_path / "a.bin").write_bytes(bytes(tail_changed))
    assert weights_digest(tmp_path) != first
    assert weights_digest(tmp_path / "b.json") != weights_digest(tmp_path)


def test_auto_device_and_precision_on_a_machine_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    device = resolve_device("auto")
    assert device.type == "cpu" and resolve_dtype("auto", device) == torch.float32
    assert resolve_dtype("bfloat16", device) == torch.bfloat16
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.gpu
def test_auto_device_and_precision_on_a_cuda_machine():
    import torch

    device = resolve_device("auto")
    assert device.type == "cuda" and resolve_dtype("auto", device) in {torch.bfloat16, torch.float16}
