"""Hub model specs (lightning_modules.hub), offline: timm and torchvision weights from local files
and from hub caches the tests lay out themselves, local folders, errors, the backbone contract.

Every test runs with ``HF_HUB_OFFLINE=1``, empty private HF and torch caches, and sockets that
refuse to connect (see ``offline_hubs``): a test that tried the network would fail loudly.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.backbones import (
    CheckpointError,
    count_parameters,
    create_backbone,
    extract_features,
    save_checkpoint,
)
from lightning_modules.hub import ModelSpecError, WeightsUnavailableError, load_model, parse_model_spec


@pytest.fixture(autouse=True)
def offline_hubs(tmp_path, monkeypatch):
    """Private, empty HF and torch.hub caches; offline mode; no network at all.

    huggingface_hub (2.4) reads ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` / ``HF_HOME`` into
    ``huggingface_hub.constants`` once, at import, and reads those module attributes at every call
    (``constants.HF_HUB_CACHE``, ``constants.is_offline_mode()``). Setting the environment here,
    after the import, would change nothing, so the attributes are patched too (monkeypatch undoes
    it); a module reload would also work but rebuilds more state than the two values we need.
    torch.hub reads ``TORCH_HOME`` at every call, so the environment suffices there.
    """
    from huggingface_hub import constants

    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried the network: {args[:2]}")

    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            refuse(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return {"hf_cache": hf_home / "hub", "torch_home": tmp_path / "torch"}


# --------------------------------------------------------------------------- helpers
def timm_model(name: str, seed: int = 0) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False).eval()


def save_state(model: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def timm_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def tv_model(name: str, seed: int = 0) -> nn.Module:
    from torchvision.models import get_model

    torch.manual_seed(seed)
    return get_model(name, weights=None).eval()


def tv_default(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def fake_hf_cache(cache: Path, repo_id: str, model: nn.Module) -> Path:
    """The real hub cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return save_state(model, repo / "snapshots" / commit / "model.safetensors")


def images(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=gen)


# --------------------------------------------------------------------------- specs
@pytest.mark.parametrize("spec,expected", [
    ("timm:resnet50", ("timm", "resnet50")),
    ("timm:resnet50.a1_in1k", ("timm", "resnet50.a1_in1k")),
    ("torchvision:mobilenet_v3_small", ("torchvision", "mobilenet_v3_small")),
    ("local:models/my model", ("local", "models/my model")),
])
def test_parse_model_spec_accepts_the_three_forms(spec, expected):
    assert parse_model_spec(spec) == expected


@pytest.mark.parametrize("spec", ["resnet50", "timm:", "hf:timm/resnet50", "timm:resnet50.a.b",
                                  "torchvision:resnet-50", "local:", "Timm:resnet50"])
def test_a_bad_spec_raises_model_spec_error_naming_it_and_the_forms(spec):
    with pytest.raises(ModelSpecError) as err:
        load_model(spec)
    assert repr(spec) in str(err.value)
    assert "timm:<name>[.<tag>], torchvision:<name> or local:<path>" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("spec,match", [
    ("timm:test_resnt", "close matches: test_resnet"),
    ("torchvision:mobilenet_v3_smal", "close matches: mobilenet_v3_small"),
    ("timm:test_resnet.no_such_tag", "known: test_resnet.r160_in1k"),
])
def test_an_unknown_model_or_tag_lists_close_matches(spec, match):
    with pytest.raises(ModelSpecError, match=match):
        load_model(spec, pretrained=False)


# --------------------------------------------------------------------------- timm
def test_timm_weights_file_gives_the_original_features_and_classifier(tmp_path):
    original = timm_model("test_resnet", seed=3)
    path = save_state(original, tmp_path / "w" / "resnet.safetensors")
    backbone, meta = load_model("timm:test_resnet", weights=path)
    assert not backbone.training and next(backbone.parameters()).device.type == "cpu"
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(backbone.features(x), timm_features(original, x))
        assert torch.equal(backbone.source_logits(x), original(x))  # the ImageNet classifier
    assert backbone.feature_dim == original.num_features == meta["feature_dim"] == 96
    assert backbone.preprocessing == {"input_size": 160, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert meta["arch"] == meta["spec"] == "timm:test_resnet"
    assert meta["source_classes"] == 1000 and meta["input_size"] == 160
    # params: the backbone without its classifier (Renggli et al. 2022's count)
    assert meta["params"] == sum(p.numel() for p in original.parameters()) - 96 * 1000 - 1000
    assert meta["weights"] == str(path)
    assert meta["upstream"] == ["imagenet-1k"] and meta["upstream_size"] == 1_281_167  # r160_in1k
    # the classifier lives in source_head only, not (twice) in the body
    assert count_parameters(backbone) == meta["params"]


def test_timm_hub_weights_load_from_the_hf_cache_offline(offline_hubs):
    original = timm_model("test_resnet", seed=5)
    fake_hf_cache(offline_hubs["hf_cache"], "timm/test_resnet.r160_in1k", original)
    backbone, meta = load_model("timm:test_resnet.r160_in1k", pretrained=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(backbone.features(x), timm_features(original, x))
        assert torch.equal(backbone.source_logits(x), original(x))
    assert meta["weights"] == "hf-hub:timm/test_resnet.r160_in1k"


def test_timm_weights_file_and_hub_cache_give_the_same_model(tmp_path, offline_hubs):
    original = timm_model("test_vit", seed=1)
    fake_hf_cache(offline_hubs["hf_cache"], "timm/test_vit.r160_in1k", original)
    from_hub, _ = load_model("timm:test_vit")
    from_file, _ = load_model("timm:test_vit", weights=save_state(original, tmp_path / "v.pth"))
    x = from_hub.preprocess(images(2))
    with torch.no_grad():
        assert torch.equal(from_hub.features(x), from_file.features(x))
        assert torch.equal(from_hub.source_logits(x), from_file.source_logits(x))


def test_timm_offline_without_cache_says_to_pre_download_or_pass_weights(offline_hubs):
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("timm:test_resnet")
    msg = str(err.value)
    assert "timm/test_resnet.r160_in1k" in msg and str(offline_hubs["hf_cache"]) in msg
    assert "HF_HUB_OFFLINE=1" in msg and "pre-download" in msg and "weights:" in msg
    assert isinstance(err.value, CheckpointError)


def test_random_init_claims_no_upstream_and_has_no_source_head():
    backbone, meta = load_model("timm:test_efficientnet", pretrained=False)
    assert backbone.source_head is None and meta["source_classes"] == 0
    assert meta["weights"] is None and meta["imagenet_acc"] is None
    assert meta["upstream"] == [] and meta["upstream_size"] == 0


def test_meta_wins_over_the_library_but_not_over_the_network_itself(tmp_path):
    path = save_state(timm_model("test_resnet"), tmp_path / "r.safetensors")
    _, meta = load_model("timm:test_resnet", weights=path,
                         meta={"imagenet_acc": 0.61, "upstream_size": 5, "upstream": ["mine"],
                               "feature_dim": 3, "notes": "x"})
    assert meta["imagenet_acc"] == 0.61 and meta["upstream_size"] == 5
    assert meta["upstream"] == ["mine"] and meta["notes"] == "x"
    assert meta["feature_dim"] == 96  # a fact of the loaded network
    with pytest.raises(ModelSpecError, match="fraction"):
        load_model("timm:test_resnet", weights=path, meta={"imagenet_acc": 61.0})


# --------------------------------------------------------------------------- torchvision
def test_torchvision_default_weights_load_from_the_torch_hub_cache(offline_hubs):
    original = tv_model("mobilenet_v3_small", seed=2)
    default = tv_default("mobilenet_v3_small")
    cached = offline_hubs["torch_home"] / "hub" / "checkpoints" / Path(default.url).name
    save_state(original, cached)  # torch.save: what torch.hub would have downloaded
    backbone, meta = load_model("torchvision:mobilenet_v3_small")
    x = backbone.preprocess(images(2))
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(backbone.source_logits(x), original(x))
        assert backbone.features(x).shape == (2, 1024)  # pre-logits: the classifier's input
    assert 0.0 <= meta["imagenet_acc"] <= 1.0
    acc1 = default.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert meta["imagenet_acc"] == pytest.approx(acc1 / 100)
    head = 1024 * 1000 + 1000  # the published count includes the ImageNet classifier
    assert meta["params"] == default.meta["num_params"] - head == count_parameters(backbone)
    assert meta["weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    assert meta["upstream"] == ["imagenet-1k"] and meta["source_classes"] == 1000
    assert backbone.preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_local_weights_file_loads_into_the_architecture(tmp_path, suffix):
    original = tv_model("mobilenet_v3_small", seed=4)
    path = save_state(original, tmp_path / f"mnv3{suffix}")
    backbone, meta = load_model("torchvision:mobilenet_v3_small", weights=path)
    x = backbone.preprocess(images(2))
    with torch.no_grad():
        assert torch.equal(backbone.source_logits(x), original(x))
    assert meta["weights"] == str(path) and 0.0 <= meta["imagenet_acc"] <= 1.0


def test_torchvision_offline_without_cache_names_the_expected_cache_file(offline_hubs):
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("torchvision:mobilenet_v3_small")
    msg = str(err.value)
    checkpoints = offline_hubs["torch_home"] / "hub" / "checkpoints"
    expected = checkpoints / "mobilenet_v3_small-047dcff4.pth"  # torch.hub's name for the URL
    assert str(expected) in msg and "pre-download" in msg and "weights:" in msg


def test_a_timm_classifier_that_is_a_1x1_convolution_becomes_the_source_head(tmp_path):
    # timm's ResNetV2 and BiT classify pooled features with a 1x1 convolution: LEEP and NCE need
    # it as the source head (it was dropped, and the catalog's ResNet V2s had no LEEP or NCE)
    original = timm_model("resnetv2_18", seed=5)
    assert isinstance(original.get_classifier(), nn.Conv2d)
    path = save_state(original, tmp_path / "resnetv2.safetensors")
    backbone, meta = load_model("timm:resnetv2_18", weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone.source_logits(x), original(x), atol=1e-5)
    assert meta["source_classes"] == 1000 and meta["feature_dim"] == 512


def test_googlenet_from_a_weights_file_with_auxiliary_heads_has_the_catalogs_parameters(tmp_path):
    # torchvision's published GoogLeNet file holds the auxiliary heads; the backbone drops them
    # (in training mode they made forward return a tuple) and counts 5,599,904 parameters
    from torchvision.models import get_model

    path = save_state(get_model("googlenet", weights=None, aux_logits=True, init_weights=False),
                      tmp_path / "googlenet.safetensors")
    backbone, meta = load_model("torchvision:googlenet", weights=path)
    assert meta["params"] == 5_599_904 and meta["feature_dim"] == 1024
    backbone.train()
    assert backbone.features(torch.randn(2, 3, 64, 64)).shape == (2, 1024)
    _, random = load_model("torchvision:googlenet", pretrained=False)
    assert random["params"] == 5_599_904


def test_torchvision_without_a_linear_classifier_gives_pooled_features_and_no_head():
    backbone, meta = load_model("torchvision:squeezenet1_1", pretrained=False)
    assert backbone.source_head is None and meta["feature_dim"] == 512
    with torch.no_grad():
        assert backbone.features(backbone.preprocess(images(2))).shape == (2, 512)


# --------------------------------------------------------------------------- local folders
def test_local_zoo_checkpoint_is_loaded_by_load_checkpoint(tmp_path):
    zoo = create_backbone("cnn", source_classes=3, width=8).eval()
    save_checkpoint(zoo, tmp_path / "cnn-a", {"arch": "cnn", "arch_kwargs": {"width": 8},
                                              "source_classes": 3, "upstream": ["shapes"]})
    backbone, meta = load_model(f"local:{tmp_path / 'cnn-a'}", meta={"imagenet_acc": 0.1})
    x = zoo.preprocess(images(2, 32))
    with torch.no_grad():
        assert torch.equal(backbone.features(x), zoo.features(x))
    assert meta["arch"] == "cnn" and meta["spec"] == f"local:{tmp_path / 'cnn-a'}"
    assert meta["upstream"] == ["shapes"] and meta["imagenet_acc"] == 0.1
    assert meta["source_classes"] == 3 and meta["input_size"] == 32


def test_local_folder_naming_a_hub_arch_loads_its_weights_into_it(tmp_path):
    original = timm_model("test_resnet", seed=7)
    folder = tmp_path / "my-resnet"
    save_state(original, folder / "model.safetensors")
    (folder / "meta.json").write_text(json.dumps({"arch": "timm:test_resnet", "imagenet_acc": 0.5,
                                                  "feature_dim": 1}))
    backbone, meta = load_model(f"local:{folder}")
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(backbone.features(x), timm_features(original, x))
        assert torch.equal(backbone.source_logits(x), original(x))
    assert meta["arch"] == "timm:test_resnet" and meta["spec"] == f"local:{folder}"
    assert meta["imagenet_acc"] == 0.5  # meta.json wins over the library's None
    assert meta["feature_dim"] == 96 and meta["weights"] == str(folder / "model.safetensors")


def test_a_saved_hub_backbone_reloads_through_local(tmp_path):
    weights = save_state(timm_model("test_resnet", seed=8), tmp_path / "r.safetensors")
    tuned, _ = load_model("timm:test_resnet", weights=weights)
    with torch.no_grad():
        tuned.body.model.layer4[0].conv1.weight.mul_(0.5)  # as if fine-tuned
    save_checkpoint(tuned, tmp_path / "tuned", {"arch": "timm:test_resnet"})
    backbone, meta = load_model(f"local:{tmp_path / 'tuned'}")
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(backbone.features(x), tuned.features(x))
        assert torch.equal(backbone.source_logits(x), tuned.source_logits(x))
    assert meta["arch"] == "timm:test_resnet"


# --------------------------------------------------------------------------- errors
def test_weights_that_do_not_fit_raise_checkpoint_error_naming_file_and_first_key(tmp_path):
    path = save_state(timm_model("test_vit"), tmp_path / "vit.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model("timm:test_resnet", weights=path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: does not fit timm:test_resnet")
    assert "missing key 'conv1.0.weight'" in msg and "unexpected key 'blocks." in msg


def test_torchvision_weights_of_the_wrong_shape_name_file_and_key(tmp_path):
    model = tv_model("mobilenet_v3_small")
    model.classifier[3] = nn.Linear(1024, 10)
    path = save_state(model, tmp_path / "ten-classes.pth")
    with pytest.raises(CheckpointError, match=r"ten-classes\.pth: does not fit .*"
                                              r"size mismatch for 'classifier\.3\.weight'"):
        load_model("torchvision:mobilenet_v3_small", weights=path)


@pytest.mark.parametrize("spec", ["timm:test_resnet", "torchvision:mobilenet_v3_small"])
def test_a_missing_weights_file_is_named(tmp_path, spec):
    missing = tmp_path / "nowhere" / "w.safetensors"
    with pytest.raises(CheckpointError, match=f"{missing}: weights file for .* not found"):
        load_model(spec, weights=missing)


def test_a_corrupt_weights_file_is_named(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=f"{path}: cannot load weights"):
        load_model("timm:test_resnet", weights=path)


def test_local_folder_problems_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'absent'}: no such folder"):
        load_model(f"local:{tmp_path / 'absent'}")
    (tmp_path / "no-meta").mkdir()
    with pytest.raises(CheckpointError, match=r"no-meta/meta\.json: missing"):
        load_model(f"local:{tmp_path / 'no-meta'}")
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "meta.json").write_text('{"arch": "timm:test_resnet"}')
    with pytest.raises(CheckpointError, match=r"no-weights/model\.safetensors: weights file"):
        load_model(f"local:{tmp_path / 'no-weights'}")


# --------------------------------------------------------------------------- backbone contract
CONTRACT = ["timm:test_resnet", "timm:test_vit", "timm:test_efficientnet",
            "torchvision:mobilenet_v3_small", "torchvision:squeezenet1_1"]


def _with_weights(spec: str, tmp_path: Path):
    kind, name = parse_model_spec(spec)
    model = timm_model(name) if kind == "timm" else tv_model(name)
    return load_model(spec, weights=save_state(model, tmp_path / f"{name}.safetensors"))


@pytest.mark.parametrize("spec", CONTRACT)
def test_hub_backbones_satisfy_the_backbone_contract(tmp_path, spec):
    backbone, meta = _with_weights(spec, tmp_path)
    size = meta["input_size"]
    x = backbone.preprocess(images(3, 20))
    assert x.shape == (3, 3, size, size) and x.dtype == torch.float32
    feats, probs = extract_features(backbone, images(3, 20).numpy(), device="cpu",
                                    with_source_probs=True)
    assert feats.shape == (3, backbone.feature_dim)
    if backbone.source_head is not None:
        assert probs.shape == (3, meta["source_classes"])
        assert torch.allclose(probs.sum(1), torch.ones(3))
    else:
        assert probs is None and spec == "torchvision:squeezenet1_1"

    groups = backbone.block_groups()
    assert list(groups) == ["first", "middle", "last"] and all(groups.values())
    ids = [id(p) for mods in groups.values() for m in mods for p in m.parameters()]
    assert len(ids) == len(set(ids))  # disjoint
    # every body parameter is in a group, except those the root owns itself (ViT tokens)
    root = backbone.body.model if spec.startswith("timm:") else backbone.body
    outside = {id(p) for p in backbone.body.parameters()} - set(ids)
    assert outside == {id(p) for p in root.parameters(recurse=False)}


@pytest.mark.parametrize("spec,prefix", [("timm:test_resnet", "model."),
                                         ("torchvision:resnet18", "")])
def test_resnet_block_groups_are_stem_and_layer1_then_layer2_3_then_layer4(spec, prefix):
    backbone, _ = load_model(spec, pretrained=False)
    names = {g: [n[len(prefix):] for n in ns] for g, ns in backbone._groups.items()}
    assert names == {"first": ["conv1", "bn1", "layer1"], "middle": ["layer2", "layer3"],
                     "last": ["layer4"]}


def test_vit_block_groups_split_the_blocks_in_thirds():
    backbone, _ = load_model("timm:test_vit", pretrained=False)
    assert backbone._groups == {
        "first": ["model.patch_embed", "model.blocks.0", "model.blocks.1"],
        "middle": ["model.blocks.2", "model.blocks.3"],
        "last": ["model.blocks.4", "model.blocks.5", "model.norm"]}


def test_surgical_finetune_of_a_hub_model_trains_only_the_chosen_group(tmp_path):
    from lightning_modules.training import run_finetune

    backbone, _ = _with_weights("timm:test_resnet", tmp_path)
    backbone.preprocessing["input_size"] = 64  # smaller inputs keep the test fast
    rng = np.random.default_rng(0)

    def split(n):
        return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 2, n)

    splits = {"train800": split(16), "val200": split(8), "test": split(8)}
    before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    first = {id(p) for m in backbone.block_groups()["first"] for p in m.parameters()}
    out = run_finetune(backbone, splits, num_classes=2, lr=0.05, steps=2, head_steps=2,
                       batch_size=8, trainable="first", precision="32-true")
    assert 0.0 <= out["val_acc"] <= 1.0 and 0.0 <= out["test_acc"] <= 1.0
    params = dict(backbone.named_parameters())
    changed = {name for name, p in params.items() if not torch.equal(p.detach(), before[name])}
    # only the first group moved (not all of it: timm zero-initialises each block's last BN, which
    # leaves the gradient of the BN before it at zero in the first steps)
    assert changed <= {n for n, p in params.items() if id(p) in first}
    assert "body.model.conv1.0.weight" in changed and "body.model.layer1.0.conv1.weight" in changed
