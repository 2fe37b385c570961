"""RobustBench zoo models by name (`ciard_fast.models.robustbench`), offline.

The zoo's own architecture files (RobustBench/robustbench, ``model_zoo/architectures/
wide_resnet.py`` and ``dm_wide_resnet.py``) are transcribed below, independently of our model
zoo: module names, forward passes and the constants they normalise with. A state dict written
from a transcription, with the key prefixes and wrappers RobustBench's files carry, is saved in
RobustBench's folder layout and loaded by name: it must load strictly and give the logits of the
transcription. The table `ZOO_LISTING` restates, for every entry we know, how the zoo's
``model_zoo/cifar10.py`` / ``cifar100.py`` build it.
"""
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ciard_fast
from ciard_fast.cli import main
from ciard_fast.models import robustbench
from ciard_fast.models.robustbench import ZooEntry

# ---------------------------------------------------------------------------------------------
# Transcriptions of the zoo's architecture files (names and forward as in RobustBench)
# ---------------------------------------------------------------------------------------------
# the constants of the DeepMind code (dm_wide_resnet.py), typed here, not taken from ciard_fast
RB_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
RB_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


class RBBasicBlock(nn.Module):
    """wide_resnet.py BasicBlock: BN-ReLU first; a width change feeds the activated input to both
    the 3x3 conv and the 1x1 convShortcut, an identity shortcut carries the raw input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equalInOut = cin == cout
        self.convShortcut = None if self.equalInOut else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        h = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        return h + (x if self.equalInOut else self.convShortcut(a))


class RBNetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[RBBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class RBWideResNet(nn.Module):
    """wide_resnet.py WideResNet(depth, num_classes, widen_factor, sub_block1): no normalisation."""

    def __init__(self, depth=28, num_classes=10, widen_factor=10, sub_block1=False):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = RBNetworkBlock(n, ch[0], ch[1], 1)
        if sub_block1:
            self.sub_block1 = RBNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = RBNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = RBNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

    def forward(self, x):
        out = self.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.avg_pool2d(out, 8).view(-1, self.nChannels))


class RBSwish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class RBDMBlock(nn.Module):
    """dm_wide_resnet.py _Block: TensorFlow SAME padding by hand before the strided 3x3 conv."""

    def __init__(self, cin, cout, stride, act):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.has_shortcut = cin != cout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if self.has_shortcut else None
        self._stride = stride

    def forward(self, x):
        a = self.relu_0(self.batchnorm_0(x))
        v = F.pad(a, (1, 1, 1, 1) if self._stride == 1 else (0, 1, 0, 1))
        h = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        return (self.shortcut(a) if self.has_shortcut else x) + h


class RBDMBlockGroup(nn.Module):
    def __init__(self, n, cin, cout, stride, act):
        super().__init__()
        self.block = nn.Sequential(*[RBDMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, act)
                                     for i in range(n)])

    def forward(self, x):
        return self.block(x)


class RBDMWideResNet(nn.Module):
    """dm_wide_resnet.py DMWideResNet: (x - mean) / std inside, mean/std non-persistent buffers."""

    def __init__(self, num_classes=10, depth=28, width=10, activation_fn=nn.ReLU, mean=RB_CIFAR10[0],
                 std=RB_CIFAR10[1]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        ch = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.init_conv = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(RBDMBlockGroup(n, ch[0], ch[1], 1, activation_fn),
                                   RBDMBlockGroup(n, ch[1], ch[2], 2, activation_fn),
                                   RBDMBlockGroup(n, ch[2], ch[3], 2, activation_fn))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = activation_fn()
        self.logits = nn.Linear(ch[3], num_classes)
        self.num_channels = ch[3]

    def forward(self, x):
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.avg_pool2d(out, 8).view(-1, self.num_channels))


def rb_model(spec, num_classes):
    """The transcription of a ZOO_LISTING spec: ("WRN", depth, width, sub_block1) or
    ("DM", depth, width, activation)."""
    kind, depth, width, extra = spec
    if kind == "WRN":
        return RBWideResNet(depth=depth, num_classes=num_classes, widen_factor=width, sub_block1=extra)
    mean, std = RB_CIFAR100 if num_classes == 100 else RB_CIFAR10
    act = {"swish": RBSwish, "silu": nn.SiLU, "relu": nn.ReLU}[extra]
    return RBDMWideResNet(num_classes=num_classes, depth=depth, width=width, activation_fn=act, mean=mean, std=std)


# How RobustBench's model_zoo/cifar10.py and cifar100.py build each entry we know (Linf).
ZOO_LISTING = {
    ("cifar10", "Zhang2019Theoretically"): ("WRN", 34, 10, True),
    ("cifar10", "Cui2020Learnable_34_10"): ("WRN", 34, 10, True),
    ("cifar10", "Chen2021LTD_WRN34_10"): ("WRN", 34, 10, False),
    ("cifar10", "Cui2023Decoupled_WRN-34-10"): ("WRN", 34, 10, False),
    ("cifar10", "Gowal2020Uncovering_70_16"): ("DM", 70, 16, "swish"),
    ("cifar10", "Gowal2020Uncovering_70_16_extra"): ("DM", 70, 16, "swish"),
    ("cifar10", "Gowal2020Uncovering_34_20"): ("DM", 34, 20, "swish"),
    ("cifar10", "Gowal2020Uncovering_28_10_extra"): ("DM", 28, 10, "swish"),
    ("cifar10", "Rebuffi2021Fixing_28_10_cutmix_ddpm"): ("DM", 28, 10, "swish"),
    ("cifar10", "Rebuffi2021Fixing_70_16_cutmix_ddpm"): ("DM", 70, 16, "swish"),
    ("cifar10", "Rebuffi2021Fixing_70_16_cutmix_extra"): ("DM", 70, 16, "swish"),
    ("cifar10", "Gowal2021Improving_28_10_ddpm_100m"): ("DM", 28, 10, "swish"),
    ("cifar10", "Gowal2021Improving_70_16_ddpm_100m"): ("DM", 70, 16, "swish"),
    ("cifar10", "Wang2023Better_WRN-28-10"): ("DM", 28, 10, "silu"),
    ("cifar10", "Wang2023Better_WRN-70-16"): ("DM", 70, 16, "silu"),
    ("cifar10", "Cui2023Decoupled_WRN-28-10"): ("DM", 28, 10, "silu"),
    ("cifar100", "Gowal2020Uncovering"): ("DM", 70, 16, "swish"),
    ("cifar100", "Gowal2020Uncovering_extra"): ("DM", 70, 16, "swish"),
    ("cifar100", "Rebuffi2021Fixing_70_16_cutmix_ddpm"): ("DM", 70, 16, "swish"),
    ("cifar100", "Rebuffi2021Fixing_28_10_cutmix_ddpm"): ("DM", 28, 10, "swish"),
    ("cifar100", "Cui2020Learnable_34_10_LBGAT0"): ("WRN", 34, 10, True),
    ("cifar100", "Cui2020Learnable_34_10_LBGAT6"): ("WRN", 34, 10, True),
    ("cifar100", "Chen2021LTD_WRN34_10"): ("WRN", 34, 10, True),
    ("cifar100", "Wang2023Better_WRN-28-10"): ("DM", 28, 10, "silu"),
    ("cifar100", "Wang2023Better_WRN-70-16"): ("DM", 70, 16, "silu"),
    ("cifar100", "Cui2023Decoupled_WRN-28-10"): ("DM", 28, 10, "silu"),
}
# the entries the issue names: all must be known
NAMED = {("cifar10", n) for n in ("Zhang2019Theoretically", "Chen2021LTD_WRN34_10", "Gowal2021Improving_28_10_ddpm_100m",
                                   "Wang2023Better_WRN-28-10", "Cui2023Decoupled_WRN-28-10", "Gowal2020Uncovering_70_16",
                                   "Gowal2020Uncovering_70_16_extra", "Gowal2020Uncovering_28_10_extra",
                                   "Rebuffi2021Fixing_28_10_cutmix_ddpm", "Rebuffi2021Fixing_70_16_cutmix_ddpm")} | \
    {("cifar100", n) for n in ("Gowal2020Uncovering", "Gowal2020Uncovering_extra", "Rebuffi2021Fixing_70_16_cutmix_ddpm",
                                "Cui2020Learnable_34_10_LBGAT6")}


def randomise(model, seed=0):
    """Random weights and BatchNorm statistics far from the identity (eval-mode BN then matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif t.dim() >= 2:  # conv / linear weights, scaled by fan-in to keep activations O(1)
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel()))
            else:
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


def save_like_robustbench(state_dict, model_dir, dataset, name, wrapping):
    """Write `state_dict` as RobustBench files come: in <model_dir>/<dataset>/Linf/<name>.pt."""
    folder = os.path.join(model_dir, dataset, "Linf")
    os.makedirs(folder, exist_ok=True)
    if wrapping == "module":  # DataParallel keys inside {"state_dict": ...} (e.g. Carmon2019Unlabeled)
        payload = {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 100}
    elif wrapping == "model":  # a wrapper module's keys (e.g. Chen2020Efficient)
        payload = {f"model.{k}": v for k, v in state_dict.items()}
    elif wrapping == "module.model":
        payload = {"state_dict": {f"module.model.{k}": v for k, v in state_dict.items()}}
    else:
        payload = dict(state_dict)
    path = os.path.join(folder, f"{name}.pt")
    torch.save(payload, path)
    return path


def test_every_entry_is_built_as_the_zoo_builds_it():
    known = {(e.dataset, e.name) for table in robustbench.ZOO.values() for e in table.values()}
    assert NAMED <= known and known == set(ZOO_LISTING)
    for (dataset, name), spec in ZOO_LISTING.items():
        entry = robustbench.get_entry(name, dataset)
        with torch.device("meta"):
            ours = robustbench.build_entry_model(entry)
            theirs = rb_model(spec, entry.num_classes)
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
        assert shapes(ours) == shapes(theirs), name
        # the normalisation is where the zoo puts it: none for the TRADES layout, the DM constants inside
        expected = None if spec[0] == "WRN" else (RB_CIFAR100 if dataset == "cifar100" else RB_CIFAR10)
        assert ours.normalization == expected, name
        assert entry.num_classes == {"cifar10": 10, "cifar100": 100}[dataset]
        assert 0 < entry.autoattack_acc < entry.clean_acc < 100, name
        assert robustbench.checkpoint_path(entry, "m") == os.path.join("m", dataset, "Linf", f"{name}.pt")
    # spot checks of the listed accuracies (RobustBench model_info)
    zhang = robustbench.get_entry("Zhang2019Theoretically")
    assert (zhang.clean_acc, zhang.autoattack_acc, zhang.eps) == (84.92, 53.08, "0.031")
    gowal = robustbench.get_entry("Gowal2020Uncovering", "cifar100")
    assert (gowal.clean_acc, gowal.autoattack_acc) == (60.86, 30.03) and gowal.model == "wrn70_16"


# small variants of every family: (listing spec, num_classes, file wrapping)
FAMILIES = [
    (("WRN", 10, 2, True), 10, "module"),
    (("WRN", 16, 1, False), 10, "model"),
    (("WRN", 10, 1, True), 100, "plain"),
    (("DM", 10, 2, "swish"), 10, "module.model"),
    (("DM", 16, 1, "silu"), 100, "module"),
    (("DM", 10, 1, "relu"), 10, "model"),
]


def _as_entry(spec, dataset, name):
    kind, depth, width, extra = spec
    if kind == "WRN":
        model, args = "wide_resnet", {"depth": depth, "widen_factor": width, "sub_block1": extra}
        normalization = None
    else:
        model = "dm_wide_resnet"
        args = {"depth": depth, "width": width, "activation": "relu" if extra == "relu" else "silu"}
        normalization = RB_CIFAR100 if dataset == "cifar100" else RB_CIFAR10
    return ZooEntry(name=name, dataset=dataset, threat_model="Linf", model=model, model_args=args,
                    architecture=f"test {kind}-{depth}-{width}", layout="TRADES" if kind == "WRN" else "DeepMind",
                    normalization=normalization, clean_acc=50.0, autoattack_acc=20.0, eps="8/255", paper="test",
                    venue="test", gdrive_id="none")


@pytest.fixture
def test_entry(monkeypatch):
    """Register a zoo entry for the test (the real tables are restored afterwards)."""
    def add(entry):
        table = dict(robustbench.ZOO[(entry.dataset, "Linf")])
        table[entry.name] = entry
        monkeypatch.setitem(robustbench.ZOO, (entry.dataset, "Linf"), table)
        return entry
    return add


@pytest.mark.parametrize("spec,num_classes,wrapping", FAMILIES, ids=lambda v: str(v))
def test_zoo_files_of_every_family_load_strictly_and_give_the_zoo_logits(tmp_path, test_entry, spec, num_classes,
                                                                          wrapping):
    dataset = "cifar100" if num_classes == 100 else "cifar10"
    entry = test_entry(_as_entry(spec, dataset, "TestFamily"))
    theirs = randomise(rb_model(spec, num_classes))
    save_like_robustbench(theirs.state_dict(), tmp_path, dataset, entry.name, wrapping)
    ours = ciard_fast.load_robustbench("TestFamily", dataset=dataset, model_dir=str(tmp_path))
    assert not ours.training and ours.robustbench is entry
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 1e-2 and expected.std(dim=1).min() > 1e-3  # a non-degenerate comparison
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    # the normalisation lives where the zoo puts it (and nowhere else for the TRADES layout)
    assert ours.normalization == (None if spec[0] == "WRN" else entry.normalization)
    # strict: a file of another family does not load
    other = rb_model(("DM", 10, 1, "swish") if spec[0] == "WRN" else ("WRN", 10, 1, False), num_classes)
    save_like_robustbench(other.state_dict(), tmp_path, dataset, entry.name, "plain")
    with pytest.raises(ValueError, match="does not fit"):
        ciard_fast.load_robustbench("TestFamily", dataset=dataset, model_dir=str(tmp_path))


@pytest.mark.parametrize("name,spec,wrapping", [
    ("Zhang2019Theoretically", ("WRN", 34, 10, True), "plain"),   # the TRADES WRN-34-10 file itself
    ("Gowal2021Improving_28_10_ddpm_100m", ("DM", 28, 10, "swish"), "module"),
])
def test_full_size_checkpoints_load_by_name(tmp_path, name, spec, wrapping):
    # a WRN-34-10 and a DM WRN-28-10 written in the zoo's layout load by their zoo name alone
    theirs = randomise(rb_model(spec, 10))
    path = save_like_robustbench(theirs.state_dict(), tmp_path / "models", "cifar10", name, wrapping)
    ours = ciard_fast.load_robustbench(name, model_dir=str(tmp_path / "models"))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    assert path.endswith(os.path.join("models", "cifar10", "Linf", f"{name}.pt"))


def test_unknown_names_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Closest: Zhang2019Theoretically"):
        ciard_fast.load_robustbench("Zhang2019Theoretical", model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="is a cifar100 entry, not a cifar10 one"):
        ciard_fast.load_robustbench("Gowal2020Uncovering", model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="dataset='digits' has no RobustBench entries"):
        robustbench.get_entry("Zhang2019Theoretically", "digits")
    with pytest.raises(ValueError, match="threat_model='L2'"):
        robustbench.get_entry("Zhang2019Theoretically", threat_model="L2")
    expected = os.path.join(str(tmp_path), "cifar100", "Linf", "Gowal2020Uncovering.pt")
    with pytest.raises(FileNotFoundError) as info:
        ciard_fast.load_robustbench("robustbench:Gowal2020Uncovering", dataset="cifar100", model_dir=str(tmp_path))
    message = str(info.value)
    assert repr(expected) in message
    assert ("python -c \"from robustbench.utils import load_model; load_model('Gowal2020Uncovering', "
            f"model_dir='{tmp_path}', dataset='cifar100', threat_model='Linf')\"") in message
    os.makedirs(os.path.dirname(expected))
    open(expected, "wb").close()
    with pytest.raises(ValueError, match="empty file"):
        ciard_fast.load_robustbench("Gowal2020Uncovering", dataset="cifar100", model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="names no model"):
        robustbench.parse_reference("robustbench:")


# ---------------------------------------------------------------------------------------------
# teachers robustbench:<name> in a run, and ciard-fast eval --model robustbench:<name>
# ---------------------------------------------------------------------------------------------
def write_small_cifar10(root, per_batch=24, test=16, seed=0):
    """A tiny CIFAR-10 in the official extracted layout: class-coloured images the tiny models learn."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    colours = rng.integers(0, 256, (10, 3))
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
        labels = rng.integers(0, 10, n)
        images = np.clip(colours[labels][:, :, None, None] + rng.integers(-20, 21, (n, 3, 32, 32)), 0, 255)
        batch = {b"data": images.astype(np.uint8).reshape(n, 3072), b"labels": labels.tolist()}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


SMALL_RUN = dict(dataset="cifar10", val_size=20, student="small_cnn", student_args={"width": 4},
                 epochs=1, batch_size=20, attack_steps=1, eval_pgd_steps=1, test_n=8, compare_natural_student=False,
                 progress=False, plot=False, device="cpu", teacher_epochs=1, allow_weak_teacher=True)


def test_a_robustbench_teacher_in_a_run_is_recorded_with_its_listed_accuracy(tmp_path, test_entry):
    data = write_small_cifar10(str(tmp_path / "data"))
    entry = test_entry(_as_entry(("DM", 10, 1, "swish"), "cifar10", "TestTeacher_DM10_1"))
    teacher = randomise(rb_model(("DM", 10, 1, "swish"), 10))
    save_like_robustbench(teacher.state_dict(), tmp_path / "zoo", "cifar10", entry.name, "module")
    result = ciard_fast.train(method="rslad", data_root=data, robust_teacher="robustbench:TestTeacher_DM10_1",
                              model_dir=str(tmp_path / "zoo"), out_dir=str(tmp_path / "run"),
                              test_attacks=("clean", "pgd_trades", "transfer_pgd"), **SMALL_RUN)
    checks = json.loads((tmp_path / "run" / "teachers.json").read_text())["robust"]
    assert checks["path"] == "robustbench:TestTeacher_DM10_1" and checks["model"] == "dm_wide_resnet"
    assert checks["robustbench"]["listed_clean_acc"] == 50.0 and checks["robustbench"]["listed_autoattack_acc"] == 20.0
    assert checks["robustbench"]["file"] == os.path.join(str(tmp_path / "zoo"), "cifar10", "Linf",
                                                         "TestTeacher_DM10_1.pt")
    assert "inside the architecture" in checks["normalize"] and "auto" not in checks and "alternatives" not in checks
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["teachers"]["robust"]["robustbench"]["name"] == "TestTeacher_DM10_1"
    assert card["evaluation"]["surrogate"]["weights"] == "robustbench:TestTeacher_DM10_1"
    assert "RobustBench lists 50.00% clean / 20.00% AutoAttack" in (tmp_path / "run" / "model_card.md").read_text()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["surrogate"]["robustbench"]["name"] == "TestTeacher_DM10_1"
    assert "transfer_pgd" in result.metrics and "BB PGD-TRADES: crafted on robustbench:TestTeacher_DM10_1" in result.table
    # the teacher the run distilled from is the zoo file, through the transcription's logits
    x = torch.rand(2, 3, 32, 32)
    ours = ciard_fast.load_robustbench("TestTeacher_DM10_1", model_dir=str(tmp_path / "zoo"))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), teacher(x), rtol=1e-4, atol=1e-5)


def test_a_missing_robustbench_teacher_file_stops_the_run_up_front(tmp_path, capsys):
    data = write_small_cifar10(str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match="load_model\\('Zhang2019Theoretically'"):
        ciard_fast.train(method="rslad", data_root=data, robust_teacher="robustbench:Zhang2019Theoretically",
                         model_dir=str(tmp_path / "none"), out_dir=str(tmp_path / "run"), **SMALL_RUN)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    code = main(["train", "--method", "rslad", "--dataset", "cifar10", "--data_root", data, "--robust_teacher",
                 "robustbench:Zhang2019Theoretically", "--model_dir", str(tmp_path / "none"), "--out_dir",
                 str(tmp_path / "run2"), "--student", "small_cnn", "--progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and os.path.join(str(tmp_path / "none"), "cifar10", "Linf", "Zhang2019Theoretically.pt") in err
    with pytest.raises(ValueError, match="robust_teacher='robustbench:Zhang2019': unknown RobustBench model"):
        ciard_fast.TrainConfig(robust_teacher="robustbench:Zhang2019")


def test_eval_evaluates_a_zoo_model_by_name(tmp_path, test_entry, capsys):
    data = write_small_cifar10(str(tmp_path / "data"))
    entry = test_entry(_as_entry(("WRN", 10, 1, True), "cifar10", "TestEval_WRN10_1"))
    save_like_robustbench(randomise(rb_model(("WRN", 10, 1, True), 10)).state_dict(), tmp_path / "zoo", "cifar10",
                          entry.name, "module")
    code = main(["eval", "--model", "robustbench:TestEval_WRN10_1", "--model_dir", str(tmp_path / "zoo"), "--root",
                 data, "--attacks", "clean,fgsm", "--n", "8", "--no-progress", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "model robustbench:TestEval_WRN10_1 (test WRN-10-1, TRADES layout" in out
    assert "listed clean 50.00% / AutoAttack 20.00%" in out and "dataset cifar10/test (16 images)" in out
    assert "| Clean | FGSM | Worst |" in out
    code = main(["eval", "--model", "robustbench:TestEval_WRN10_1", "--model_dir", str(tmp_path / "missing"),
                 "--root", data, "--no-progress"])
    assert code == 2 and "Fetch it on a machine with internet access" in capsys.readouterr().err


def test_compare_shares_a_robustbench_teacher(tmp_path, test_entry):
    data = write_small_cifar10(str(tmp_path / "data"))
    entry = test_entry(_as_entry(("WRN", 10, 1, False), "cifar10", "TestCompare_WRN10_1"))
    save_like_robustbench(randomise(rb_model(("WRN", 10, 1, False), 10)).state_dict(), tmp_path / "zoo", "cifar10",
                          entry.name, "model")
    settings = {k: v for k, v in SMALL_RUN.items() if k != "compare_natural_student"}
    result = ciard_fast.compare(["rslad", "ard"], preset=None, out_dir=str(tmp_path / "cmp"), data_root=data,
                                robust_teacher="robustbench:TestCompare_WRN10_1", model_dir=str(tmp_path / "zoo"),
                                test_attacks=("clean", "transfer_pgd"), **settings)
    assert result.teachers == {"robust": "robustbench:TestCompare_WRN10_1"}
    for method in ("rslad", "ard"):
        run = tmp_path / "cmp" / method / "seed-0"
        assert json.loads((run / "teachers.json").read_text())["robust"]["robustbench"]["name"] == entry.name
        assert json.loads((run / "surrogate.json").read_text())["weights"] == "robustbench:TestCompare_WRN10_1"
    assert set(result.rows) == {"rslad", "ard"}
