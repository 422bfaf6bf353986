"""The evaluation protocol (``mambast.evaluation``, ``python -m mambast evaluate``) on random-weight
stand-ins of the metric networks, written in the layouts of their released files; nothing is
downloaded. LPIPS is checked against the ``lpips`` package and the Inception against ArtFID's own
``inception.py`` (both installed by the test command without their dependencies)."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

import mambast
from mambast.commands import evaluate as evaluate_command, main as run_command
from mambast.evaluation import (CFSD, LPIPS, METRIC_FILES, ArtInception, Evaluation, MetricWeightsMissing,
                                alexnet_features, art_fid, evaluate_images, feature_statistics, find_metric_files,
                                frechet_distance, frechet_distance_of_statistics,
                                load_metric_networks, patch_similarity_divergence, vgg19_to_relu3_1)
from mambast.evaluation import weights as metric_weights
from mambast.network.checkpoint import CheckpointError
from mambast.utils.imaging import write_image


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scale_for_depth(network: nn.Module, seed: int) -> nn.Module:
    """He-normal convolutions, so that random features neither vanish nor explode with depth."""
    torch.manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.uniform_(module.bias, -0.1, 0.1)
    return network


def art_fid_inception_module():
    """ArtFID's ``inception.py`` from the installed art-fid package, loaded alone (the package's
    ``__init__`` imports torchvision and scikit-learn); None when art-fid is not installed."""
    spec = importlib.util.find_spec("art_fid")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "inception.py"
    module_spec = importlib.util.spec_from_file_location("art_fid_inception_alone", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def release_inception_state(seed: int) -> dict[str, torch.Tensor]:
    """Random weights in the layout of art_inception.pth: ArtFID's Inception3 with its two
    classification heads and two auxiliary heads (or, without art-fid, ours plus heads of those names)."""
    module = art_fid_inception_module()
    if module is not None:
        network = scale_for_depth(module.Inception3(), seed)
    else:
        network = scale_for_depth(ArtInception(), seed)
        network.fc1, network.fc2 = nn.Linear(2048, 1000), nn.Linear(2048, 1000)
        network.AuxLogits1 = nn.Sequential(nn.Conv2d(768, 128, 1))
        network.AuxLogits2 = nn.Sequential(nn.Conv2d(768, 128, 1))
    return network.state_dict()


def write_standin_metric_files(folder: Path, seed: int = 0) -> Path:
    """The four metric files with random weights, keyed as the released ones (later layers and
    classifiers that the metrics do not read included in part, to check they are left alone)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(release_inception_state(seed), folder / "art_inception.pth")
    alexnet = scale_for_depth(alexnet_features(), seed + 1).state_dict()
    alexnet["classifier.6.bias"] = torch.zeros(1000)
    torch.save(alexnet, folder / "alexnet-owt-7be5be79.pth")
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=seeded(seed + i)) * 0.1
              for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(linear, folder / "alex.pth")
    vgg = scale_for_depth(vgg19_to_relu3_1(), seed + 2).state_dict()
    vgg["features.12.weight"], vgg["features.12.bias"] = torch.zeros(256, 256, 3, 3), torch.zeros(256)
    torch.save(vgg, folder / "vgg19-dcbb9e9d.pth")
    return folder


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory) -> Path:
    return write_standin_metric_files(tmp_path_factory.mktemp("metrics"))


@pytest.fixture(scope="module")
def networks(metrics_dir):
    return load_metric_networks(metrics_dir)


# -- FID ---------------------------------------------------------------------------------------
def direct_frechet(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The distance straight from its definition, with SciPy's sqrtm and, independently, from the
    eigenvalues of S_a^(1/2) S_b S_a^(1/2) (those of S_a S_b)."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    base = float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b))
    by_sqrtm = base - 2 * float(np.trace(linalg.sqrtm(cov_a @ cov_b)).real)
    values, vectors = linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    eigenvalues = np.clip(linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)
    return by_sqrtm, base - 2 * float(np.sqrt(eigenvalues).sum())


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(300, 48))
    assert abs(frechet_distance(features, features)) <= 1e-6


def test_frechet_distance_equals_a_direct_computation():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 40))
    b = rng.normal(size=(400, 40)) @ rng.normal(size=(40, 40)) * 0.3 + 0.5
    ours = frechet_distance(a, b)
    by_sqrtm, by_eigenvalues = direct_frechet(a, b)
    assert ours > 1
    assert abs(ours - by_sqrtm) <= 1e-6 * abs(by_sqrtm)
    assert abs(ours - by_eigenvalues) <= 1e-6 * abs(by_eigenvalues)
    statistics = [*feature_statistics(a), *feature_statistics(b)]
    assert abs(frechet_distance_of_statistics(*statistics) - by_sqrtm) <= 1e-6 * abs(by_sqrtm)
    # More samples than features on one side, fewer on the other: both closed forms.
    few = b[:25]
    assert abs(frechet_distance(a, few) - direct_frechet(a, few)[1]) <= 1e-6 * direct_frechet(a, few)[1]
    assert abs(frechet_distance(a, a + np.array([3.0] + [0.0] * 39)) - 9.0) <= 1e-6  # a shift of the mean


def test_frechet_distance_of_fewer_samples_than_dimensions_stays_finite():
    # 12 images, 64 features: both covariances are singular, as at 800 images of 2048 features.
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 64)), rng.normal(size=(12, 64)) + 0.2
    ours = frechet_distance(a, b)
    _, by_eigenvalues = direct_frechet(a, b)
    assert np.isfinite(ours) and ours > 0
    assert abs(ours - by_eigenvalues) <= 1e-6 * by_eigenvalues
    # ArtFID's way (sqrtm, with its offset where the root is not finite) lands within rounding of it.
    by_statistics = frechet_distance_of_statistics(*feature_statistics(a), *feature_statistics(b))
    assert abs(by_statistics - ours) <= 1e-3 * ours


def test_frechet_distance_refuses_mismatched_or_too_few_features():
    with pytest.raises(ValueError, match="different widths"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((1, 3)))


# -- LPIPS -------------------------------------------------------------------------------------
def lpips_package(monkeypatch):
    """The ``lpips`` package, imported. It imports torchvision for its trunks; where torchvision
    cannot be imported (the test environment's torch has no matching build), a stand-in module
    gives it ``models.alexnet`` with AlexNet's layers, the trunk's weights being copied below anyway."""
    try:
        import torchvision.models  # noqa: F401
    except Exception:
        models = types.ModuleType("torchvision.models")

        def alexnet(pretrained=False, **_):
            assert not pretrained, "the test never asks for downloaded weights"
            return alexnet_features()

        models.alexnet = alexnet
        package = types.ModuleType("torchvision")
        package.models = models
        monkeypatch.setitem(sys.modules, "torchvision", package)
        monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("lpips")


def test_lpips_equals_the_lpips_package_on_the_same_weights(monkeypatch):
    lpips = lpips_package(monkeypatch)
    # The package's own linear layers (alex.pth inside it), a random AlexNet trunk.
    theirs = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    scale_for_depth(theirs.net, 3)
    ours = LPIPS().eval()
    trunk = {}
    for key, value in theirs.net.state_dict().items():  # slice<k>.<index>.<weight|bias>
        _, index, name = key.split(".")
        trunk[f"features.{index}.{name}"] = value
    ours.trunk.load_state_dict(trunk)
    package_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    ours.load_linear_layers(torch.load(package_file, map_location="cpu", weights_only=True))
    a = torch.rand(2, 3, 72, 88, generator=seeded(0))
    b = (a + 0.3 * torch.rand(2, 3, 72, 88, generator=seeded(1))).clamp(0, 1)
    with torch.no_grad():
        for x, y in ((a, b), (a[:, :1], b[:, :1])):  # RGB, and grayscale as the gray variant feeds it
            expected = theirs(x, y, normalize=True).flatten()
            got = ours(x, y)
            assert (expected > 0).all()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        assert float(ours(a, a).abs().max()) == 0.0


# -- Inception ---------------------------------------------------------------------------------
def test_inception_features_equal_artfids_own_network(metrics_dir, networks):
    module = art_fid_inception_module()
    if module is None:
        pytest.skip("art-fid is not installed (the test command installs it)")
    theirs = module.Inception3()
    theirs.load_state_dict(torch.load(metrics_dir / "art_inception.pth", weights_only=True))
    theirs.eval()
    image = torch.rand(1, 3, 120, 104, generator=seeded(4))
    with torch.no_grad():
        expected = theirs(image, return_features=True)
        got = networks.inception(image)
    assert got.shape == (1, 2048)
    assert float(expected.abs().max()) > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_trunks_match_torchvision_where_it_imports():
    try:
        from torchvision import models
    except Exception:
        pytest.skip("torchvision does not import with this torch")
    image = torch.rand(1, 3, 96, 96, generator=seeded(5))
    for ours, theirs, end in ((alexnet_features(), models.alexnet().features, 13),
                              (vgg19_to_relu3_1(), models.vgg19().features, 12)):
        ours.load_state_dict({f"features.{k}": v for k, v in theirs.state_dict().items()}, strict=False)
        with torch.no_grad():
            torch.testing.assert_close(ours(image), theirs[:end](image))


# -- CFSD --------------------------------------------------------------------------------------
def reference_cfsd(vgg: nn.Module, stylized: torch.Tensor, content: torch.Tensor) -> float:
    """The reference's PatchSimi arithmetic, whole matrices at once, in the inputs' dtype."""
    def similarity(x, log):
        b, c, h, w = x.shape
        features = x.transpose(1, 3).reshape(b, h * w, c) / c
        logits = features @ features.transpose(1, 2)
        return (F.log_softmax(logits, -1) if log else F.softmax(logits, -1)).reshape(b, -1)

    mean = torch.tensor([0.485, 0.456, 0.406], dtype=stylized.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=stylized.dtype).view(1, 3, 1, 1)
    s, c = vgg.features((stylized - mean) / std), vgg.features((content - mean) / std)
    return float(F.kl_div(similarity(s, True), similarity(c, False), reduction="batchmean"))


def test_cfsd_of_an_image_with_itself_is_zero(networks):
    image = torch.rand(1, 3, 64, 48, generator=seeded(6))
    assert float(networks.cfsd(image, image)[0]) == 0.0


def test_cfsd_equals_the_reference_arithmetic_in_any_block_size(networks):
    content = torch.rand(1, 3, 64, 48, generator=seeded(7))
    stylized = (0.3 * content + 0.7 * torch.rand(1, 3, 64, 48, generator=seeded(8))).clamp(0, 1)
    cfsd64 = copy.deepcopy(networks.cfsd).double()
    with torch.no_grad():
        # In float64 the two arithmetics agree to rounding: the formula is the reference's.
        expected = reference_cfsd(cfsd64.vgg, stylized.double(), content.double())
        got64 = float(cfsd64(stylized.double(), content.double())[0])
        features = cfsd64.features(stylized.double()), cfsd64.features(content.double())
        in_blocks_of_7 = float(patch_similarity_divergence(*features, rows_per_block=7)[0])
        # In float32 (what runs) the divergence loses about 3 digits to cancellation, in both
        # arithmetics, by amounts that depend on the CPU's kernels (ours 4.4e-3 from float64 and the
        # reference's 9.5e-4 on one machine, ours the closer on another): both held to one bound.
        got32 = float(networks.cfsd(stylized, content)[0])
        reference32 = reference_cfsd(networks.cfsd.vgg, stylized, content)
    assert expected > 1e-4
    assert abs(got64 - expected) <= 1e-7 * expected
    assert abs(in_blocks_of_7 - expected) <= 1e-7 * expected
    assert abs(reference32 - expected) <= 1e-2 * expected
    assert abs(got32 - expected) <= 1e-2 * expected
    with pytest.raises(ValueError, match="one size"):
        networks.cfsd(stylized, content[..., :40])


# -- weights -----------------------------------------------------------------------------------
def test_missing_metric_files_are_each_named_with_source_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(metric_weights.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setitem(METRIC_FILES, "lpips", dataclasses.replace(METRIC_FILES["lpips"], owner_cache=lambda _: []))
    empty = tmp_path / "metrics"
    empty.mkdir()
    with pytest.raises(MetricWeightsMissing) as caught:
        find_metric_files(empty)
    message = str(caught.value)
    for spec in METRIC_FILES.values():
        assert spec.name in message and spec.source in message
    assert f"put it in {empty}" in message and str(tmp_path / "torch") in message
    # The command says the same and exits non-zero, before stylizing anything.
    contents, styles = image_folder(tmp_path / "c", 1, 0), image_folder(tmp_path / "s", 2, 10)
    with pytest.raises(SystemExit) as exited:
        run_command(["evaluate", "--content-dir", str(contents), "--style-dir", str(styles), "--metrics-dir", str(empty),
                     "--out", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "absent")])
    assert "art_inception.pth" in str(exited.value.code) and "vgg19-dcbb9e9d.pth" in str(exited.value.code)
    assert not (tmp_path / "out").exists()


def test_metric_files_are_found_by_environment_and_owner_caches(tmp_path, monkeypatch, metrics_dir):
    monkeypatch.setenv("MAMBAST_METRICS_DIR", str(metrics_dir))
    assert find_metric_files()["inception"] == metrics_dir / "art_inception.pth"
    monkeypatch.delenv("MAMBAST_METRICS_DIR")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for name in ("alexnet-owt-7be5be79.pth", "vgg19-dcbb9e9d.pth"):
        (hub / name).write_bytes((metrics_dir / name).read_bytes())
    (tmp_path / "tmp" / "art_fid").mkdir(parents=True)
    (tmp_path / "tmp" / "art_fid" / "art_inception.pth").write_bytes((metrics_dir / "art_inception.pth").read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(metric_weights.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    files = find_metric_files()
    assert files["vgg19"] == hub / "vgg19-dcbb9e9d.pth"
    assert files["inception"] == tmp_path / "tmp" / "art_fid" / "art_inception.pth"
    assert files["lpips"].parts[-3:] == ("weights", "v0.1", "alex.pth")  # inside the installed lpips package


def test_a_wrong_file_under_a_metric_name_is_refused_with_its_name(tmp_path, metrics_dir):
    folder = tmp_path / "metrics"
    folder.mkdir()
    for name in ("alexnet-owt-7be5be79.pth", "alex.pth", "vgg19-dcbb9e9d.pth"):
        (folder / name).write_bytes((metrics_dir / name).read_bytes())
    (folder / "art_inception.pth").write_bytes((metrics_dir / "vgg19-dcbb9e9d.pth").read_bytes())
    with pytest.raises(CheckpointError, match="art_inception.pth.*missing keys"):
        load_metric_networks(folder)
    (folder / "art_inception.pth").write_text("<html>not found</html>")
    with pytest.raises(CheckpointError, match="art_inception.pth.*not a weights file"):
        load_metric_networks(folder)


# -- the protocol ------------------------------------------------------------------------------
def test_artfid_follows_its_formula_and_scores_hold_together(networks):
    assert art_fid(2.0, 0.5) == pytest.approx(4.5)
    contents = [torch.rand(3, 80, 96, generator=seeded(10 + i)) for i in range(2)]
    styles = [torch.rand(3, 90, 90, generator=seeded(20 + i)) for i in range(2)]
    stylized, content_list, style_list = [], [], []
    for i, content in enumerate(contents):
        for j, style in enumerate(styles):
            stylized.append((0.5 * content + 0.5 * F.interpolate(style[None], size=(80, 96))[0]).clamp(0, 1))
            content_list.append(content)
            style_list.append(style)
    scores = evaluate_images(stylized, content_list, style_list, networks, metric_size=80)
    assert scores.pairs == 4
    assert scores.art_fid == pytest.approx((1 + scores.lpips) * (1 + scores.fid))
    assert scores.fid > 0 and scores.lpips > 0 and scores.lpips_gray > 0 and scores.cfsd > 0
    # Contents as their own stylizations: LPIPS and CFSD vanish.
    same = evaluate_images(content_list, content_list, style_list, networks, metric_size=80)
    assert same.lpips == 0 and same.lpips_gray == 0 and same.cfsd == 0
    with pytest.raises(ValueError, match="different lengths"):
        evaluate_images(stylized, content_list[:3], style_list, networks, metric_size=80)


def test_files_and_tensors_give_the_same_scores(tmp_path, networks):
    images = {name: torch.rand(1, 3, 84, 100, generator=seeded(30 + i)) for i, name in enumerate("abcdef")}
    paths = {}
    for name, image in images.items():
        paths[name] = tmp_path / f"{name}.png"
        write_image(image, paths[name])
    triples = [("a", "b", "c"), ("d", "e", "f"), ("a", "e", "c")]
    from_files = evaluate_images(*zip(*[[paths[n] for n in t] for t in triples]), networks, metric_size=90)
    from_tensors = evaluate_images(*zip(*[[images[n] for n in t] for t in triples]), networks, metric_size=90)
    for key, value in from_files.as_dict().items():
        assert getattr(from_tensors, key) == pytest.approx(value, rel=1e-6, abs=1e-9), key


# -- the command -------------------------------------------------------------------------------
def image_folder(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_image(torch.rand(1, 3, 72 + 8 * i, 88, generator=seeded(seed + i)), folder / f"img{i}.png")
    return folder


def evaluate_command_line(tmp_path, metrics_dir, small_tensors, *extra) -> list[str]:
    from safetensors.torch import save_file

    checkpoint = tmp_path / "small.safetensors"
    if not checkpoint.exists():
        save_file(small_tensors, str(checkpoint))
    contents, styles = image_folder(tmp_path / "content", 2, 0), image_folder(tmp_path / "style", 3, 10)
    return ["evaluate", "--content-dir", str(contents), "--style-dir", str(styles), "--checkpoint", str(checkpoint),
            "--metrics-dir", str(metrics_dir), "--out", str(tmp_path / "out"), "--size", "64", "--device", "cpu",
            "--seed", "3", *extra]


def test_evaluate_stylizes_measures_continues_and_measures_other_methods(tmp_path, metrics_dir, small_tensors,
                                                                         monkeypatch, capsys):
    command = evaluate_command_line(tmp_path, metrics_dir, small_tensors)
    contents, styles, out = tmp_path / "content", tmp_path / "style", tmp_path / "out"
    assert run_command(command) == 0
    stylized = sorted(out.glob("*_stylized_*.jpg"))  # JPEG by default, as the reference saves them
    assert len(stylized) == 6 and not list(out.glob("*_stylized_*.png"))
    report = json.loads((out / "metrics.json").read_text())
    scores = report["scores"]
    assert scores["pairs"] == 6
    assert all(np.isfinite(v) for v in scores.values())
    assert scores["art_fid"] == pytest.approx((1 + scores["lpips"]) * (1 + scores["fid"]))
    assert report["paper"]["art_fid"] == 27.11 and report["paper"]["peak_memory_mib"] == 1414
    timing = report["stylization"]
    assert timing["images_timed"] == 6 and timing["pairs_timed"] == 5 and timing["warm_up_pairs_excluded"] == 1
    assert 0 < timing["model_seconds"] < timing["end_to_end_seconds"]
    assert timing["dtype"] == "float32" and timing["scan"] in ("numba", "chunked")
    assert report["settings"]["seed"] == 3 and report["settings"]["method"] == "mambast"
    assert report["settings"]["format"] == "jpg" and len(report["settings"]["checkpoint_sha256"]) == 64
    assert {w["file"] for w in report["metric_weights"].values()} == {spec.name for spec in METRIC_FILES.values()}
    assert all(len(w["sha256"]) == 64 for w in report["metric_weights"].values())
    assert len(report["pairs"]) == 6 and {"stylized", "content", "style", "lpips", "lpips_gray", "cfsd"} <= set(
        report["pairs"][0])
    assert np.mean([pair["lpips"] for pair in report["pairs"]]) == pytest.approx(scores["lpips"])
    printed = capsys.readouterr()
    assert "ArtFID" in printed.out and "27.11" in printed.out and "[" in printed.err  # table and progress bar
    assert "first pair excluded" in printed.out

    # Interrupted runs continue: a removed pair is stylized (and measured) again, the others kept.
    stylized[0].unlink()
    kept = {p: p.stat().st_mtime_ns for p in stylized[1:]}
    measured = []
    original = Evaluation.measure
    monkeypatch.setattr(Evaluation, "measure", lambda self, *pair: measured.append(pair[0]) or original(self, *pair))
    assert run_command(command) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()) and stylized[0].exists()
    assert measured == [stylized[0]]  # the other pairs' measurements were kept beside them
    again = json.loads((out / "metrics.json").read_text())
    assert again["stylization"]["images_timed"] == 1 and "pairs_timed" not in again["stylization"]
    for key, value in scores.items():
        assert again["scores"][key] == pytest.approx(value, rel=1e-6), key

    # Another method's images: measured without loading Mamba-ST.
    other = tmp_path / "other"
    other.mkdir()
    for path in stylized:
        (other / path.name).write_bytes(path.read_bytes())

    def no_model(*_, **__):
        raise AssertionError("--stylized must not load Mamba-ST")

    monkeypatch.setattr(evaluate_command, "load", no_model)
    other_out = tmp_path / "other_out"
    assert run_command(["evaluate", "--content-dir", str(contents), "--style-dir", str(styles), "--stylized", str(other),
                        "--metrics-dir", str(metrics_dir), "--out", str(other_out), "--device", "cpu"]) == 0
    theirs = json.loads((other_out / "metrics.json").read_text())
    assert theirs["stylization"] is None and theirs["settings"]["method"] == "other"
    for key, value in scores.items():
        assert theirs["scores"][key] == pytest.approx(value, rel=1e-6), key
    (other / stylized[1].name).unlink()
    with pytest.raises(SystemExit, match=r"1 of 6 stylized images are not in .*" + stylized[1].stem):
        run_command(["evaluate", "--content-dir", str(contents), "--style-dir", str(styles), "--stylized", str(other),
                     "--metrics-dir", str(metrics_dir), "--out", str(other_out), "--device", "cpu"])


def test_outputs_are_jpeg_at_quality_75_or_png_on_request(tmp_path, metrics_dir, small_tensors):
    from PIL import Image

    assert run_command(evaluate_command_line(tmp_path, metrics_dir, small_tensors)) == 0
    produced = sorted((tmp_path / "out").glob("*.jpg"))[0]
    reference = tmp_path / "reference.jpg"
    with Image.open(produced) as image:
        image.convert("RGB").save(reference)  # Pillow's own default: quality 75, as torchvision's save_image
        tables = image.quantization
    with Image.open(reference) as image:
        assert image.quantization == tables
    assert run_command(evaluate_command_line(tmp_path, metrics_dir, small_tensors, "--format", "png",
                                             "--out", str(tmp_path / "png"))) == 0
    assert len(list((tmp_path / "png").glob("*_stylized_*.png"))) == 6


def test_crop_is_the_references_resize_and_centre_crop(tmp_path):
    from PIL import Image

    picture = torch.rand(1, 3, 81, 130, generator=seeded(4))
    path = tmp_path / "wide.png"
    write_image(picture, path)
    got = evaluate_command.read_cropped(path, 64)
    # torchvision: Resize(64) -> (64, int(64 * 130 / 81)) = (64, 102); CenterCrop: round(19) left.
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((102, 64), Image.BILINEAR)
    left = int(round((102 - 64) / 2.0))
    expected = torch.from_numpy(np.asarray(resized.crop((left, 0, left + 64, 64))).copy()).permute(2, 0, 1)[None]
    assert got.shape == (1, 3, 64, 64) and torch.equal((got * 255).round().to(torch.uint8), expected)
    write_image(torch.rand(1, 3, 64, 64, generator=seeded(5)), tmp_path / "square.png")
    assert torch.equal(evaluate_command.read_cropped(tmp_path / "square.png", 64),
                       mambast.read_image(tmp_path / "square.png"))  # the paper's 512 px squares stay as they are


def test_crop_gives_square_outputs_of_the_size(tmp_path, metrics_dir, small_tensors):
    from PIL import Image

    assert run_command(evaluate_command_line(tmp_path, metrics_dir, small_tensors, "--crop")) == 0
    for path in (tmp_path / "out").glob("*_stylized_*.jpg"):
        with Image.open(path) as image:
            assert image.size == (64, 64)


def test_a_rerun_with_other_settings_is_refused_naming_them_and_overwrite_redoes_it(tmp_path, metrics_dir,
                                                                                   small_tensors):
    assert run_command(evaluate_command_line(tmp_path, metrics_dir, small_tensors)) == 0
    out = tmp_path / "out"
    kept = {p: p.read_bytes() for p in out.glob("*_stylized_*")}
    for extra, named in ((["--size", "48"], "--size: 64 there, 48 now"), (["--seed", "4"], "--seed: 3 there, 4 now"),
                         (["--crop"], "--crop: False there, True now"),
                         (["--dtype", "bfloat16"], "--dtype: 'float32' there, 'bfloat16' now"),
                         (["--seam-smoothing", "2"], "--seam-smoothing: 0 there, 2 now"),
                         (["--format", "png"], "--format: 'jpg' there, 'png' now")):
        command = evaluate_command_line(tmp_path, metrics_dir, small_tensors)
        command[command.index("--size") + 1:command.index("--size") + 2] = ["64"]
        with pytest.raises(SystemExit) as refused:
            run_command([*command, *extra])
        assert named in str(refused.value.code) and "--overwrite" in str(refused.value.code), refused.value.code
        assert {p: p.read_bytes() for p in out.glob("*_stylized_*")} == kept
    # Other weights under the same name: refused too.
    from safetensors.torch import save_file

    save_file({k: v + 0.01 for k, v in small_tensors.items()}, str(tmp_path / "small.safetensors"))
    with pytest.raises(SystemExit, match="the checkpoint: other weights"):
        run_command(evaluate_command_line(tmp_path, metrics_dir, small_tensors))
    assert run_command([*evaluate_command_line(tmp_path, metrics_dir, small_tensors), "--overwrite"]) == 0
    redone = json.loads((out / "metrics.json").read_text())
    assert redone["stylization"]["images_timed"] == 6
    # Images without a record of their settings (an earlier version's) are not measured either.
    (out / evaluate_command.SETTINGS_FILE).unlink()
    with pytest.raises(SystemExit, match="no record of the settings"):
        run_command(evaluate_command_line(tmp_path, metrics_dir, small_tensors))


def test_an_unreadable_image_is_named_before_anything_is_stylized(tmp_path, metrics_dir, small_tensors):
    command = evaluate_command_line(tmp_path, metrics_dir, small_tensors)
    (tmp_path / "style" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut short")
    with pytest.raises(SystemExit, match="broken.png"):
        run_command(command)
    assert not list((tmp_path / "out").glob("*_stylized_*")) if (tmp_path / "out").exists() else True


def test_a_missing_lpips_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(metric_weights.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setitem(METRIC_FILES, "lpips", dataclasses.replace(METRIC_FILES["lpips"], owner_cache=lambda _: []))
    monkeypatch.delenv("MAMBAST_METRICS_DIR", raising=False)
    with pytest.raises(MetricWeightsMissing) as caught:
        find_metric_files(None)
    line = next(line for line in str(caught.value).splitlines() if "alex.pth" in line)
    assert "Looked at: ." not in line and "no metrics folder was given" in line


def test_evaluate_images_refuses_mismatched_counts_before_measuring(networks, monkeypatch):
    monkeypatch.setattr(Evaluation, "measure", lambda *_: pytest.fail("measured before the counts were checked"))
    images = [torch.rand(3, 40, 40, generator=seeded(i)) for i in range(3)]
    with pytest.raises(ValueError, match=r"different lengths \(3, 2, 3\)"):
        evaluate_images(images, images[:2], images, networks)
