"""``ciard-fast export`` and model cards: a tiny ARD student trained in the test, exported to every
format, loaded back independently of the exporter and compared with the PyTorch model; BatchNorm
folding against the unfolded model; the card against results.json; fault injection and bad input."""
import json
import os
import sys

import pytest
import torch
from torch import nn

import ciard_fast
from ciard_fast.cli import main
from ciard_fast.config import build_config
from ciard_fast.deploy import ExportVerificationError, fold_batchnorm, load_safetensors_student
from ciard_fast.deploy.exporter import verify
from ciard_fast.engine.checkpoint import load_checkpoint
from ciard_fast.engine.model_card import build_model_card, weights_digest
from ciard_fast.models import create_model, load_weights

# 16x16 synthetic images, a ResNet-8 of width 4 (residual shortcuts with a downsampling conv+BN).
TINY = dict(
    method="ard", dataset="synthetic", dataset_args={"num_samples": 160, "num_test": 64, "image_size": 16},
    val_size=64, student="small_resnet", student_args={"width": 4},
    robust_teacher_model="small_cnn", robust_teacher_args={"width": 4}, robust_teacher_normalize=True,
    teacher_epochs=1, epochs=2, batch_size=32, attack_steps=2, eval_pgd_steps=2, eval_every=1,
    test_attacks=("clean", "fgsm", "pgd_sat"), test_n=48, compare_natural_student=False,
    progress=False, plot=False, device="cpu",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = ciard_fast.train(build_config(overrides={**TINY, "out_dir": str(out / "student")}))
    teacher = ciard_fast.train(build_config(overrides={**TINY, "method": "natural", "epochs": 1, "test_attacks": (),
                                                       "out_dir": str(out / "teacher")}))
    return result, teacher


def _reference(checkpoint):
    """The student rebuilt by hand (not through the exporter) from its training checkpoint."""
    state = load_checkpoint(checkpoint)
    model = create_model("small_resnet", num_classes=10, width=4)
    data = ciard_fast.load_dataset("synthetic", split="train", val_size=64, **TINY["dataset_args"])
    model.set_normalization((data.mean, data.std))
    load_weights(model, state["student"])
    return model.eval()


def _batch(n=7):
    test = ciard_fast.load_dataset("synthetic", split="test", val_size=64, **TINY["dataset_args"])
    return test.images[:n].permute(0, 3, 1, 2).float().div(255).contiguous(), test.labels[:n]


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 3 + 0.1)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


# ---- BatchNorm folding --------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs,kept", [("small_cnn", {"width": 8}, 0), ("small_resnet", {"width": 8}, 0),
                                              ("mobilenet_v2", {}, 0), ("preact_resnet18", {}, 8)])
def test_folded_model_equals_unfolded(name, kwargs, kept):
    torch.manual_seed(0)
    model = _randomise_bn(create_model(name, normalize="cifar10", **kwargs))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 3, 32, 32)
    folded, n_folded, n_kept = fold_batchnorm(model)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (ref - out).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    assert n_kept == kept and n_folded > 0
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert remaining == kept
    # the original is untouched (folding works on a copy)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_folding_is_not_the_identity():
    # a control: the folded weights really differ from the conv's (BN statistics are not trivial)
    model = _randomise_bn(create_model("small_cnn", width=4))
    folded, _, _ = fold_batchnorm(model)
    assert not torch.allclose(folded.get_submodule("model.conv1").weight, model.conv1.weight)
    assert folded.get_submodule("model.conv1").bias is not None and model.conv1.bias is None


class _SharedConv(nn.Module):
    """The conv's output feeds its BN *and* a residual: folding the BN would change the residual."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        z = self.conv(x)
        return self.bn(z) + z


def test_bn_after_a_shared_conv_is_kept_and_exact():
    model = _randomise_bn(_SharedConv())
    folded, n_folded, n_kept = fold_batchnorm(model)
    x = torch.rand(2, 3, 8, 8)
    assert (n_folded, n_kept) == (0, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-6)


def test_fold_refuses_a_train_mode_model():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(create_model("small_cnn", width=4).train())


# ---- round trips --------------------------------------------------------------------------------
def test_onnx_round_trip(run, tmp_path):
    import onnx
    import onnxruntime as ort

    result, _ = run
    out = tmp_path / "student.onnx"
    exp = ciard_fast.export(result.best_checkpoint, format="onnx", out=out, log=None)
    v = exp.verification
    assert v["passed"] and v["max_abs_logit_diff"] <= 1e-4 and v["adv_agreement"] >= 99.0
    assert v["n"] == 64 and v["split"] == "val" and exp.bn_folded == 9 and exp.bn_kept == 0
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(node.op_type == "BatchNormalization" for node in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model"] == "small_resnet" and json.loads(meta["model_kwargs"]) == {"width": 4}
    # loaded back here, independently of the exporter, at a batch size it was not traced with
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, _ = _batch(7)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        ref = _reference(result.best_checkpoint)(x)
    assert got.shape == ref.shape and (got - ref).abs().max() <= 1e-4


def test_onnx_without_folding_keeps_batchnorm(run, tmp_path):
    import onnx

    result, _ = run
    out = tmp_path / "unfolded.onnx"
    exp = ciard_fast.export(result.best_checkpoint, format="onnx", out=out, fold_bn=False, log=None)
    assert exp.verification["passed"] and exp.bn_folded == 0 and exp.bn_kept == 9
    assert sum(node.op_type == "BatchNormalization" for node in onnx.load(str(out)).graph.node) == 9


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_round_trip(run, tmp_path):
    result, _ = run
    out = tmp_path / "student.pt"
    exp = ciard_fast.export(result.best_checkpoint, format="torchscript", out=out, log=None)
    assert exp.verification["passed"] and exp.verification["adv_agreement"] >= 99.0
    extra = {"ciard_fast.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra).eval()
    assert json.loads(extra["ciard_fast.json"])["model"] == "small_resnet"
    assert exp.bn_folded == 9 and not any(".bn" in name or "batchnorm" in type(m).__name__.lower()
                                          for name, m in module.named_modules())
    x, _ = _batch(5)
    with torch.no_grad():
        assert (module(x) - _reference(result.best_checkpoint)(x)).abs().max() <= 1e-4


def test_safetensors_loads_into_create_model_with_identical_logits(run, tmp_path):
    from ciard_fast.deploy import safetensors_metadata

    result, _ = run
    out = tmp_path / "student.safetensors"
    exp = ciard_fast.export(result.best_checkpoint, format="safetensors", out=out, log=None)
    assert exp.verification["max_abs_logit_diff"] == 0.0
    meta = safetensors_metadata(out)
    mean, std = json.loads(meta["normalize"])
    model = create_model(meta["model"], num_classes=int(meta["num_classes"]), normalize=(mean, std),
                         **json.loads(meta["model_kwargs"]))
    load_weights(model, str(out))  # load_weights reads .safetensors files
    x, _ = _batch(6)
    ref = _reference(result.best_checkpoint)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref(x))
        assert torch.equal(load_safetensors_student(out)(x), ref(x))
    assert meta["weights_sha256"] == weights_digest(load_checkpoint(result.best_checkpoint)["student"])


def test_load_weights_names_a_broken_safetensors_file(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="safetensors"):
        load_weights(create_model("small_cnn", width=4), str(bad))


# ---- model cards --------------------------------------------------------------------------------
CARD_KEYS = ("model", "dataset", "threat_model", "evaluation", "training", "teachers", "config_sha256",
             "software", "created", "robustbench")


def test_run_card_has_every_field_and_the_results_json_accuracies(run):
    result, _ = run
    card = json.loads(open(os.path.join(result.out_dir, "model_card.json")).read())
    results = json.loads(open(os.path.join(result.out_dir, "results.json")).read())
    for key in CARD_KEYS:
        assert key in card, key
    assert card["evaluation"]["accuracy"] == results["test"]["ard student (small_resnet)"] == result.metrics
    assert set(card["evaluation"]["settings"]) == {"clean", "fgsm", "pgd_sat"}
    assert card["evaluation"]["settings"]["pgd_sat"]["steps"] == 20 and card["evaluation"]["n"] == 48
    m = card["model"]
    assert m["architecture"] == "small_resnet" and m["kwargs"] == {"width": 4}
    assert m["parameters"] == sum(p.numel() for p in _reference(result.best_checkpoint).parameters())
    assert m["weights_sha256"] == weights_digest(load_checkpoint(result.best_checkpoint)["student"])
    assert card["dataset"]["splits"] == {"train": 96, "val": 64, "test": 64}
    assert card["threat_model"] == {"norm": "Linf", "eps": TINY.get("eps", 8 / 255), "eps_text": "8/255"}
    assert card["training"]["method"] == "ard" and "tau" in card["training"]["options"]
    assert card["training"]["epochs"] == 2 and card["training"]["seed"] == 0
    assert card["teachers"]["robust"]["architecture"] == "small_cnn"
    assert card["teachers"]["robust"]["kwargs"] == {"width": 4} and card["teachers"]["robust"]["normalize"] is True
    assert card["teachers"]["robust"]["method"] == result.config.robust_teacher_method
    assert card["teachers"]["robust"]["path"] == result.teachers["robust"]
    assert card["software"]["torch"] == torch.__version__
    rb = card["robustbench"]
    assert rb["clean_acc"] == f"{result.metrics['clean']:.2f}" and rb["autoattack_acc"] is None
    assert rb["eps"] == "8/255" and rb["architecture"] == "small_resnet" and rb["dataset"] == "synthetic"
    md = open(os.path.join(result.out_dir, "model_card.md")).read()
    assert f"| {result.metrics['clean']:.2f} | {result.metrics['fgsm']:.2f} |" in md


def test_card_reads_teachers_json_and_changes_hash_with_the_config(run, tmp_path):
    result, _ = run
    (tmp_path / "teachers.json").write_text(json.dumps(
        {"unit": "percent",
         "robust": {"path": "r.pt", "model": "small_cnn", "normalize": True, "val_clean": 81.5, "val_pgd": 40.25}}))
    model = _reference(result.best_checkpoint)
    state = load_checkpoint(result.best_checkpoint)["student"]
    sizes = {"train": 96, "val": 64, "test": 64}
    card = build_model_card(result.config, model, sizes, result.metrics, result.best_checkpoint, state,
                            teacher_paths=result.teachers, out_dir=str(tmp_path))
    assert card["teachers"]["robust"]["val_clean"] == 81.5 and card["teachers"]["robust"]["val_pgd"] == 40.25
    assert card["teachers"]["robust"]["unit"] == "percent" and card["evaluation"]["unit"] == "percent"
    # a teachers.json of an earlier version (no "unit": fractions) is read in percent
    (tmp_path / "teachers.json").write_text(json.dumps(
        {"robust": {"path": "r.pt", "model": "small_cnn", "normalize": True, "val_clean": 0.815, "val_pgd": 0.4025}}))
    old = build_model_card(result.config, model, sizes, result.metrics, result.best_checkpoint, state,
                           teacher_paths=result.teachers, out_dir=str(tmp_path))
    assert old["teachers"]["robust"]["val_clean"] == pytest.approx(81.5)
    assert old["teachers"]["robust"]["val_pgd"] == pytest.approx(40.25)
    other = build_model_card(result.config.replace(seed=1), model, sizes, result.metrics, result.best_checkpoint,
                             state, out_dir=str(tmp_path))
    moved = build_model_card(result.config.replace(out_dir=str(tmp_path / "elsewhere")), model, sizes,
                             result.metrics, result.best_checkpoint, state, out_dir=str(tmp_path))
    assert other["config_sha256"] != card["config_sha256"] == moved["config_sha256"]


def test_export_card_carries_the_run_accuracies_and_the_verification(run, tmp_path):
    result, _ = run
    out = tmp_path / "student.onnx"
    exp = ciard_fast.export(result.best_checkpoint, format="onnx", out=out, log=None)
    card = json.loads(open(exp.card_json).read())
    results = json.loads(open(os.path.join(result.out_dir, "results.json")).read())
    assert card["evaluation"]["accuracy"] == results["test"]["ard student (small_resnet)"]
    ex = card["export"]
    assert ex["format"] == "onnx" and ex["file"] == str(out) and ex["bytes"] == out.stat().st_size
    assert ex["verification"] == exp.verification and ex["fold_bn"] is True
    assert "max |Δlogit|" in open(exp.card_md).read()


def test_export_of_other_weights_does_not_borrow_the_run_accuracies(run, tmp_path):
    # a run folder whose card describes best.pt, and a checkpoint with one weight changed
    import shutil

    from ciard_fast.engine.checkpoint import save_checkpoint

    result, _ = run
    shutil.copy(os.path.join(result.out_dir, "model_card.json"), tmp_path / "model_card.json")
    state = load_checkpoint(result.best_checkpoint)
    state["student"]["fc.bias"] = state["student"]["fc.bias"] + 0.5
    save_checkpoint(tmp_path / "other.pt", state)
    shutil.copy(result.best_checkpoint, tmp_path / "best.pt")
    other = ciard_fast.export(str(tmp_path / "other.pt"), format="safetensors", out=tmp_path / "o.safetensors",
                              log=None)
    same = ciard_fast.export(str(tmp_path / "best.pt"), format="safetensors", out=tmp_path / "b.safetensors",
                             log=None)
    card_other, card_same = (json.loads(open(e.card_json).read()) for e in (other, same))
    assert card_other["evaluation"] is None and "no evaluation" in card_other["evaluation_note"]
    assert card_other["robustbench"]["clean_acc"] is None
    # the teachers ARD needs (only a robust one), read from the checkpoint's config
    assert set(card_other["teachers"]) == {"robust"} and card_other["teachers"]["robust"]["architecture"] == "small_cnn"
    assert card_same["evaluation"]["accuracy"] == result.metrics


# ---- verification failures: an error and no file -----------------------------------------------
def test_wrong_folding_fails_verification_and_writes_nothing(run, tmp_path, monkeypatch, capsys):
    import ciard_fast.deploy.fold as fold

    result, _ = run
    real = fold.fold_conv_bn

    def broken(conv, bn):  # an off-by-a-little bias, the kind of bug folding code has
        fused = real(conv, bn)
        fused.bias.data += 1e-2
        return fused

    monkeypatch.setattr(fold, "fold_conv_bn", broken)
    out = tmp_path / "student.onnx"
    with pytest.raises(ExportVerificationError, match="max \\|Δlogit\\|"):
        ciard_fast.export(result.best_checkpoint, format="onnx", out=out, log=None)
    assert not out.exists() and os.listdir(tmp_path) == []
    # an existing file at --out is left as it was; the CLI exits 1 with one line
    out.write_bytes(b"previous")
    code = main(["export", "--checkpoint", result.best_checkpoint, "--format", "torchscript", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and out.read_bytes() == b"previous"
    assert len(err.strip().splitlines()) == 1 and "verification failed" in err
    assert not os.path.exists(str(out) + ".model_card.json")


def test_agreement_below_the_threshold_fails():
    torch.manual_seed(0)
    model = create_model("small_cnn", width=4).eval()
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 10, (16,))

    def rolled(images):  # same values, other classes: Δlogit can pass a loose tolerance, agreement cannot
        with torch.no_grad():
            return model(images).roll(1, dims=1)

    figures = verify(model, rolled, x, y, eps=8 / 255, tolerance=1e3)
    assert figures["adv_agreement"] < 99.0 and not figures["passed"]
    same = verify(model, lambda images: model(images).detach(), x, y, eps=8 / 255)
    assert same["passed"] and same["adv_agreement"] == 100.0 and same["max_abs_logit_diff"] == 0.0


# ---- the command line and bad input -------------------------------------------------------------
def _cli(capsys, *argv):
    code = main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exports_and_prints_the_figures(run, tmp_path, capsys):
    result, _ = run
    out = tmp_path / "student.onnx"
    code, stdout, err = _cli(capsys, "--checkpoint", result.best_checkpoint, "--format", "onnx", "--out", str(out),
                             "--n", "32")
    assert code == 0, err
    assert "max |Δlogit|" in stdout and "prediction agreement" in stdout and "on 32 synthetic/val images" in stdout
    assert out.is_file() and (tmp_path / "student.onnx.model_card.json").is_file()


def test_a_natural_run_exports_without_a_flag_and_its_card_says_it_is_not_robust(run, tmp_path, capsys):
    _, teacher = run
    out = tmp_path / "natural.safetensors"
    code, _, err = _cli(capsys, "--checkpoint", teacher.last_checkpoint, "--format", "safetensors", "--out", str(out))
    assert code == 0, err
    card = json.loads(open(str(out) + ".model_card.json").read())
    assert card["training"]["method"] == "natural" and card["training"]["teacher_run"] is True
    assert "natural classifier" in card["training"]["what"] and "not robust" in card["training"]["what"]
    assert "**What it is:** natural classifier" in open(str(out) + ".model_card.md").read()
    # the earlier opt-in flag is still accepted (and changes nothing)
    code, _, err = _cli(capsys, "--checkpoint", teacher.last_checkpoint, "--format", "safetensors", "--out",
                        str(tmp_path / "again.safetensors"), "--allow_teacher")
    assert code == 0, err


@pytest.mark.parametrize("method,words", [("sat", "adversarially trained classifier (SAT"),
                                          ("trades", "adversarially trained classifier (TRADES"),
                                          ("ard", "robust student distilled with ARD from a robust teacher")])
def test_the_card_says_what_each_kind_of_run_is(run, method, words):
    from ciard_fast.engine.model_card import describe_model

    result, _ = run
    assert words in describe_model(result.config.replace(method=method, method_args={}))


def test_a_checkpoint_from_before_the_first_epoch_is_no_trained_model(run, tmp_path, capsys):
    from ciard_fast.engine.checkpoint import save_checkpoint

    result, _ = run
    state = load_checkpoint(result.last_checkpoint)
    early = tmp_path / "early" / "last.pt"
    save_checkpoint(early, dict(state, epoch=0))
    out = tmp_path / "early.onnx"
    code, _, err = _cli(capsys, "--checkpoint", str(early), "--format", "onnx", "--out", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no trained model yet" in err and not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--format", "tflite"], "unknown export format 'tflite'; choose one of onnx, torchscript, safetensors"),
    (["--format", "safetensors", "--fold_bn", "true"], "fold_bn=True does not apply to safetensors"),
])
def test_cli_bad_arguments_are_one_line(run, tmp_path, capsys, argv, message):
    result, _ = run
    code, _, err = _cli(capsys, "--checkpoint", result.best_checkpoint, "--out", str(tmp_path / "x"), *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_cli_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = _cli(capsys, "--checkpoint", str(tmp_path / "nope.pt"), "--format", "onnx", "--out",
                        str(tmp_path / "x.onnx"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "does not exist" in err


@pytest.mark.parametrize("module", ["onnxruntime", "onnx"])
def test_cli_missing_onnx_packages_is_one_line(run, tmp_path, capsys, monkeypatch, module):
    result, _ = run
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    code, _, err = _cli(capsys, "--checkpoint", result.best_checkpoint, "--format", "onnx", "--out",
                        str(tmp_path / "x.onnx"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert module in err and "pip install 'ciard-fast[export]'" in err and not (tmp_path / "x.onnx").exists()
