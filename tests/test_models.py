"""The model zoo: shapes, gradients, checkpoint-key compatibility, normalisation, load_weights.

The expected checkpoint layouts below are written from the public model definitions, not from
our models:
  kuangliu/pytorch-cifar          models/resnet.py, models/preact_resnet.py, models/mobilenetv2.py
  yaodongyu/TRADES                models/wideresnet.py           (model_cifar_wrn.pt)
  RobustBench/robustbench         robustbench/model_zoo/architectures/dm_wide_resnet.py
  chenyaofo/pytorch-cifar-models  pytorch_cifar_models/resnet.py (cifar10_resnet56 hub weights)
The parameter counts are the ones those definitions give (ResNet-18 11,173,962; WRN-34-10
46,160,474; ResNet-56 855,770; ... for 10 classes), counted by hand from the layer shapes.

The heavy models (WRN-34-10, WRN-28-10, WRN-70-16) are built once per num_classes for the
file. Their real forward/backward at 64x64 and every real WRN-70-16 forward are marked ``slow``
(about 2 minutes on 2 CPU cores; still run in CI); by default they are covered by shapes on the
meta device, their checkpoint layouts, and their classes at a small width (forward equal to the
public forward, gradients everywhere). ``python -m pytest tests/test_models.py -m "not slow"``
takes about 30 s on 2 shared CPU cores.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ciard_fast.models import (
    DATASET_STATS,
    ImageClassifier,
    create_model,
    list_models,
    load_weights,
    register_model,
)
from ciard_fast.models import registry as registry_module
from ciard_fast.models.dm_wide_resnet import DMWideResNet
from ciard_fast.models.wide_resnet import WideResNet

LIGHT = ["resnet18", "preact_resnet18", "mobilenet_v2", "resnet56", "resnet20", "small_cnn",
         "small_resnet"]
HEAVY = ["wrn34_10", "wrn28_10", "wrn70_16", "wide_resnet", "dm_wide_resnet"]
SIZES = (32, 64)
NUM_CLASSES = (10, 100, 200)


# --------------------------------------------------------------------------------------------
# public layouts, described independently: {key: shape}
# --------------------------------------------------------------------------------------------
def _conv(sd, name, out_c, in_c, k, groups=1):
    sd[f"{name}.weight"] = (out_c, in_c // groups, k, k)


def _bn(sd, name, c):
    sd.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
               f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})


def _linear(sd, name, out_f, in_f):
    sd.update({f"{name}.weight": (out_f, in_f), f"{name}.bias": (out_f,)})


def kuangliu_resnet18(nc):
    """kuangliu ResNet18(): ResNet(BasicBlock, [2,2,2,2]); shortcut = Sequential(conv1x1, BN)."""
    sd = {}
    _conv(sd, "conv1", 64, 3, 3)
    _bn(sd, "bn1", 64)
    in_planes = 64
    for li, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], 1):
        for bi, s in enumerate([stride, 1]):
            p = f"layer{li}.{bi}"
            _conv(sd, f"{p}.conv1", planes, in_planes, 3)
            _bn(sd, f"{p}.bn1", planes)
            _conv(sd, f"{p}.conv2", planes, planes, 3)
            _bn(sd, f"{p}.bn2", planes)
            if s != 1 or in_planes != planes:
                _conv(sd, f"{p}.shortcut.0", planes, in_planes, 1)
                _bn(sd, f"{p}.shortcut.1", planes)
            in_planes = planes
    _linear(sd, "linear", nc, 512)
    return sd


def kuangliu_preact_resnet18(nc):
    """kuangliu PreActResNet18(): no stem BN, no final BN; shortcut = Sequential(conv1x1)."""
    sd = {}
    _conv(sd, "conv1", 64, 3, 3)
    in_planes = 64
    for li, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], 1):
        for bi, s in enumerate([stride, 1]):
            p = f"layer{li}.{bi}"
            _bn(sd, f"{p}.bn1", in_planes)
            _conv(sd, f"{p}.conv1", planes, in_planes, 3)
            _bn(sd, f"{p}.bn2", planes)
            _conv(sd, f"{p}.conv2", planes, planes, 3)
            if s != 1 or in_planes != planes:
                _conv(sd, f"{p}.shortcut.0", planes, in_planes, 1)
            in_planes = planes
    _linear(sd, "linear", nc, 512)
    return sd


MBV2_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]


def kuangliu_mobilenet_v2(nc):
    """kuangliu MobileNetV2(): shortcut conv+BN only when stride == 1 and channels change."""
    sd = {}
    _conv(sd, "conv1", 32, 3, 3)
    _bn(sd, "bn1", 32)
    i, in_planes = 0, 32
    for expansion, out_planes, n, stride in MBV2_CFG:
        for s in [stride] + [1] * (n - 1):
            p, planes = f"layers.{i}", expansion * in_planes
            _conv(sd, f"{p}.conv1", planes, in_planes, 1)
            _bn(sd, f"{p}.bn1", planes)
            _conv(sd, f"{p}.conv2", planes, planes, 3, groups=planes)
            _bn(sd, f"{p}.bn2", planes)
            _conv(sd, f"{p}.conv3", out_planes, planes, 1)
            _bn(sd, f"{p}.bn3", out_planes)
            if s == 1 and in_planes != out_planes:
                _conv(sd, f"{p}.shortcut.0", out_planes, in_planes, 1)
                _bn(sd, f"{p}.shortcut.1", out_planes)
            i, in_planes = i + 1, out_planes
    _conv(sd, "conv2", 1280, 320, 1)
    _bn(sd, "bn2", 1280)
    _linear(sd, "linear", nc, 1280)
    return sd


def trades_wide_resnet(depth, k, nc, sub_block1=True):
    """TRADES WideResNet(depth, num_classes, widen_factor): conv1, block1, sub_block1, block2,
    block3 (NetworkBlock.layer.i: bn1, conv1, bn2, conv2, convShortcut), bn1, fc."""
    n, ch = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
    sd = {}
    _conv(sd, "conv1", ch[0], 3, 3)

    def network_block(name, in_planes, out_planes):
        for i in range(n):
            p, cin = f"{name}.layer.{i}", in_planes if i == 0 else out_planes
            _bn(sd, f"{p}.bn1", cin)
            _conv(sd, f"{p}.conv1", out_planes, cin, 3)
            _bn(sd, f"{p}.bn2", out_planes)
            _conv(sd, f"{p}.conv2", out_planes, out_planes, 3)
            if cin != out_planes:
                _conv(sd, f"{p}.convShortcut", out_planes, cin, 1)

    network_block("block1", ch[0], ch[1])
    if sub_block1:
        network_block("sub_block1", ch[0], ch[1])
    network_block("block2", ch[1], ch[2])
    network_block("block3", ch[2], ch[3])
    _bn(sd, "bn1", ch[3])
    _linear(sd, "fc", nc, ch[3])
    return sd


def dm_wide_resnet(depth, width, nc):
    """RobustBench DMWideResNet: init_conv, layer.g.block.i.{batchnorm_0, conv_0, batchnorm_1,
    conv_1, shortcut}, batchnorm, logits; mean/std are not checkpoint keys."""
    n, ch = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
    sd = {}
    _conv(sd, "init_conv", ch[0], 3, 3)
    for g in range(3):
        for i in range(n):
            p, cin = f"layer.{g}.block.{i}", ch[g] if i == 0 else ch[g + 1]
            _bn(sd, f"{p}.batchnorm_0", cin)
            _conv(sd, f"{p}.conv_0", ch[g + 1], cin, 3)
            _bn(sd, f"{p}.batchnorm_1", ch[g + 1])
            _conv(sd, f"{p}.conv_1", ch[g + 1], ch[g + 1], 3)
            if cin != ch[g + 1]:
                _conv(sd, f"{p}.shortcut", ch[g + 1], cin, 1)
    _bn(sd, "batchnorm", ch[3])
    _linear(sd, "logits", nc, ch[3])
    return sd


def chenyaofo_resnet(n, nc):
    """chenyaofo CifarResNet(BasicBlock, [n]*3): downsample = Sequential(conv1x1, BN), fc."""
    sd = {}
    _conv(sd, "conv1", 16, 3, 3)
    _bn(sd, "bn1", 16)
    inplanes = 16
    for li, (planes, stride) in enumerate([(16, 1), (32, 2), (64, 2)], 1):
        for bi in range(n):
            p = f"layer{li}.{bi}"
            _conv(sd, f"{p}.conv1", planes, inplanes, 3)
            _bn(sd, f"{p}.bn1", planes)
            _conv(sd, f"{p}.conv2", planes, planes, 3)
            _bn(sd, f"{p}.bn2", planes)
            if bi == 0 and (stride != 1 or inplanes != planes):
                _conv(sd, f"{p}.downsample.0", planes, inplanes, 1)
                _bn(sd, f"{p}.downsample.1", planes)
            inplanes = planes
    _linear(sd, "fc", nc, 64)
    return sd


PUBLIC_LAYOUTS = {
    "resnet18": kuangliu_resnet18,
    "preact_resnet18": kuangliu_preact_resnet18,
    "mobilenet_v2": kuangliu_mobilenet_v2,
    "wrn34_10": lambda nc: trades_wide_resnet(34, 10, nc),
    "wrn28_10": lambda nc: trades_wide_resnet(28, 10, nc),
    "wrn70_16": lambda nc: dm_wide_resnet(70, 16, nc),
    "wide_resnet": lambda nc: trades_wide_resnet(34, 10, nc),  # its default depth and width
    "dm_wide_resnet": lambda nc: dm_wide_resnet(28, 10, nc),
    "resnet56": lambda nc: chenyaofo_resnet(9, nc),
    "resnet20": lambda nc: chenyaofo_resnet(3, nc),
}

# Parameters that the public definitions count for 10 classes (sum of weight/bias sizes).
# For TRADES the count excludes the never-run sub_block1, which we hold as buffers.
PUBLIC_PARAM_COUNTS = {
    "resnet18": 11_173_962,
    "preact_resnet18": 11_171_146,
    "mobilenet_v2": 2_296_922,
    "wrn34_10": 46_160_474,
    "wrn28_10": 36_479_194,
    "wrn70_16": 266_796_506,
    "wide_resnet": 46_160_474,  # WRN-34-10 by default
    "dm_wide_resnet": 36_479_194,  # WRN-28-10 by default: the weight shapes of the TRADES WRN-28-10
    "resnet56": 855_770,
    "resnet20": 272_474,
}
# tensors in each public state_dict (10 classes)
PUBLIC_KEY_COUNTS = {"resnet18": 122, "preact_resnet18": 102, "mobilenet_v2": 344,
                     "wrn34_10": 252, "wrn70_16": 407, "resnet56": 344}


def _meta_model(name, num_classes=10, **kw):
    # on the meta device: no memory, no arithmetic; keys, shapes and output shapes are real
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes, **kw)


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _random_state(layout, generator=None):
    return {k: (torch.randn(s, generator=generator) if s else torch.tensor(3))
            for k, s in layout.items()}


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def test_every_registered_model_is_in_this_file():
    assert sorted(LIGHT + HEAVY) == list_models()


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError) as e:
        create_model("resnet19")
    msg = str(e.value)
    assert "'resnet19'" in msg
    for name in list_models():
        assert name in msg


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10", None])
def test_bad_num_classes_is_rejected(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("small_cnn", num_classes=bad)


def test_non_str_name_and_unknown_keyword():
    with pytest.raises(TypeError):
        create_model(18)
    with pytest.raises(TypeError, match="width"):  # the message names what is accepted
        create_model("resnet18", width=3)


def test_register_model_decorator_and_duplicates():
    name = "test_models_tiny_linear"

    class Tiny(ImageClassifier):
        def __init__(self, num_classes, hidden):
            super().__init__(num_classes)
            self.fc = nn.Linear(3, num_classes)
            self.hidden = hidden

        def forward_normalized(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    try:
        @register_model(name)
        def tiny(num_classes=10, hidden=4):
            return Tiny(num_classes, hidden)

        assert name in list_models()
        m = create_model(name, num_classes=7, normalize="cifar10", hidden=9)
        assert m(torch.rand(2, 3, 5, 5)).shape == (2, 7)
        assert m.hidden == 9 and m.normalization == DATASET_STATS["cifar10"]
        with pytest.raises(ValueError, match="already registered"):
            register_model(name)(lambda num_classes=10: Tiny(num_classes, 1))
        with pytest.raises(TypeError):
            register_model("")
    finally:
        registry_module.MODELS.unregister(name)
    assert name not in list_models()


def test_normalize_on_a_plain_module_is_a_type_error():
    name = "test_models_plain_module"
    try:
        register_model(name)(lambda num_classes=10: nn.Linear(3, num_classes))
        assert isinstance(create_model(name), nn.Linear)
        with pytest.raises(TypeError, match="ImageClassifier"):
            create_model(name, normalize="cifar10")
    finally:
        registry_module.MODELS.unregister(name)


# --------------------------------------------------------------------------------------------
# shapes on every model x size x num_classes (meta device: instant, covers the heavy models)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LIGHT + HEAVY)
def test_output_shapes_on_meta(name):
    for nc in NUM_CLASSES:
        model = _meta_model(name, nc)
        for size in SIZES:
            with torch.device("meta"):
                y = model(torch.empty(2, 3, size, size))
            assert y.shape == (2, nc), (name, nc, size)


# --------------------------------------------------------------------------------------------
# real forward + backward: finite logits, a finite gradient on every parameter
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def get_model():
    cache = {}

    def get(name, nc):
        if (name, nc) not in cache:
            if name in HEAVY:  # keep one heavy model alive at a time (WRN-70-16 is 1 GB)
                for key in [k for k in cache if k[0] in HEAVY]:
                    del cache[key]
            torch.manual_seed(0)
            cache[(name, nc)] = create_model(name, num_classes=nc)
        return cache[(name, nc)]

    yield get
    cache.clear()


# default runs: every light model everywhere, the TRADES WRNs at 32x32; the rest (WRNs at
# 64x64, all of WRN-70-16: ~2 min on 2 CPU cores) is marked slow. The WRN classes also run
# at a small width, in every run, in test_wide_resnet_classes_forward_backward_at_small_width.
HEAVY_FAST_SIZES = {"wrn34_10": {32}, "wrn28_10": {32}, "wrn70_16": set()}
# the generic factories build the very classes of wrn34_10 / wrn70_16 (at their default sizes the
# weight shapes are checked above and below): no second forward/backward grid for them
GENERIC = {"wide_resnet", "dm_wide_resnet"}


def _grid():
    out = []
    for name in [n for n in LIGHT + HEAVY if n not in GENERIC]:
        for nc in NUM_CLASSES:  # sizes innermost: a heavy model is built once per num_classes
            for size in SIZES:
                fast = name in LIGHT or size in HEAVY_FAST_SIZES[name]
                marks = [] if fast else [pytest.mark.slow]
                out.append(pytest.param(name, nc, size, marks=marks, id=f"{name}-{nc}-{size}"))
    return out


@pytest.mark.parametrize("name,nc,size", _grid())
def test_forward_backward(get_model, name, nc, size):
    model = get_model(name, nc).train()
    model.zero_grad(set_to_none=True)
    x = torch.rand(2, 3, size, size)
    y = model(x)
    assert y.shape == (2, nc)
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()  # a random upstream gradient, not .sum()
    params = dict(model.named_parameters())
    assert params
    for pname, p in params.items():
        assert p.grad is not None, f"{name}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
    first = next(iter(params.values()))  # the stem conv: the gradient went all the way down
    assert first.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# checkpoint keys: our state_dict == the public layout, and its checkpoints load strictly
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PUBLIC_LAYOUTS))
@pytest.mark.parametrize("nc", [10, 100])
def test_state_dict_matches_public_layout(name, nc):
    expected = PUBLIC_LAYOUTS[name](nc)
    assert _shapes(_meta_model(name, nc)) == expected
    # the normalised model has the same keys: statistics are non-persistent
    assert _shapes(_meta_model(name, nc, normalize="cifar100")) == expected


@pytest.mark.parametrize("name", sorted(PUBLIC_PARAM_COUNTS))
def test_parameter_counts_match_the_public_models(name):
    model = _meta_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLIC_PARAM_COUNTS[name]
    if name in PUBLIC_KEY_COUNTS:
        assert len(model.state_dict()) == PUBLIC_KEY_COUNTS[name]


def test_parameter_counts_follow_num_classes():
    # only the classifier changes: 512 * 90 + 90 more weights for ResNet-18 at 100 classes
    m = _meta_model("resnet18", 100)
    assert sum(p.numel() for p in m.parameters()) == 11_173_962 + 90 * 513
    m = _meta_model("wrn70_16", 100)
    assert sum(p.numel() for p in m.parameters()) == 266_796_506 + 90 * 1025


def test_explicit_first_keys_and_shapes():
    r18 = _shapes(_meta_model("resnet18"))
    assert list(r18)[:14] == [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
        "layer1.0.bn1.bias", "layer1.0.bn1.running_mean", "layer1.0.bn1.running_var",
        "layer1.0.bn1.num_batches_tracked", "layer1.0.conv2.weight", "layer1.0.bn2.weight"]
    assert r18["conv1.weight"] == (64, 3, 3, 3)
    assert r18["linear.weight"] == (10, 512)
    assert r18["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert r18["layer2.0.shortcut.1.running_var"] == (128,)
    assert "layer1.0.shortcut.0.weight" not in r18  # identity shortcut: no keys

    pre = _shapes(_meta_model("preact_resnet18"))
    assert list(pre)[:3] == ["conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias"]
    assert pre["layer2.0.bn1.weight"] == (64,)  # pre-activation: BN over the block's input
    assert pre["layer2.0.shortcut.0.weight"] == (128, 64, 1, 1)
    assert "layer2.0.shortcut.1.weight" not in pre and "bn1.weight" not in pre

    mb = _shapes(_meta_model("mobilenet_v2"))
    assert mb["layers.0.conv2.weight"] == (32, 1, 3, 3)  # depthwise
    assert mb["layers.0.shortcut.0.weight"] == (16, 32, 1, 1)
    assert "layers.2.shortcut.0.weight" not in mb  # stride-2 block: no residual
    assert mb["linear.weight"] == (10, 1280)

    wrn = _shapes(_meta_model("wrn34_10"))
    assert wrn["conv1.weight"] == (16, 3, 3, 3)
    assert wrn["block1.layer.0.convShortcut.weight"] == (160, 16, 1, 1)
    assert wrn["sub_block1.layer.0.convShortcut.weight"] == (160, 16, 1, 1)
    assert wrn["sub_block1.layer.4.bn2.running_var"] == (160,)
    assert wrn["block3.layer.0.conv1.weight"] == (640, 320, 3, 3)
    assert wrn["fc.weight"] == (10, 640)
    assert sum(k.startswith("sub_block1.") for k in wrn) == 61

    dm = _shapes(_meta_model("wrn70_16"))
    assert list(dm)[:2] == ["init_conv.weight", "layer.0.block.0.batchnorm_0.weight"]
    assert dm["layer.0.block.0.shortcut.weight"] == (256, 16, 1, 1)
    assert dm["layer.2.block.10.conv_1.weight"] == (1024, 1024, 3, 3)
    assert dm["logits.weight"] == (10, 1024)
    assert "mean" not in dm and "std" not in dm

    r56 = _shapes(_meta_model("resnet56"))
    assert r56["layer2.0.downsample.0.weight"] == (32, 16, 1, 1)
    assert r56["layer3.8.bn2.weight"] == (64,)
    assert "layer3.9.conv1.weight" not in r56
    assert r56["fc.weight"] == (10, 64)


def test_trades_sub_block1_is_kept_as_buffers_not_parameters():
    model = _meta_model("wrn34_10")
    params = dict(model.named_parameters())
    assert not any(k.startswith("sub_block1.") for k in params)
    assert "sub_block1.layer.0.conv1.weight" in model.state_dict()
    no_sub = _meta_model("wrn34_10", sub_block1=False)
    assert _shapes(no_sub) == trades_wide_resnet(34, 10, 10, sub_block1=False)


@pytest.mark.parametrize("name", sorted(PUBLIC_LAYOUTS))
def test_a_checkpoint_in_the_public_layout_loads_strictly(name):
    layout = PUBLIC_LAYOUTS[name](10)
    if name in HEAVY:
        # the whole of load_weights on the meta device: same key/shape checks, no gigabytes
        state = {k: torch.empty(s, device="meta") for k, s in layout.items()}
        load_weights(_meta_model(name), {"state_dict": state}, strict=True)
        return
    model = create_model(name)
    state = _random_state(layout, torch.Generator().manual_seed(1))
    load_weights(model, state, strict=True)
    got = model.state_dict()
    for k, v in state.items():
        assert torch.equal(got[k], v), k


# --------------------------------------------------------------------------------------------
# forward semantics: our forward == the public forward (re-written functionally here)
# --------------------------------------------------------------------------------------------
def _c(sd, x, name, stride=1, padding=0, groups=1):
    return F.conv2d(x, sd[f"{name}.weight"], None, stride, padding, 1, groups)


def _b(sd, x, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"],
                        sd[f"{name}.weight"], sd[f"{name}.bias"], False, 0.0, 1e-5)


def ref_kuangliu_resnet18(sd, x):
    out = F.relu(_b(sd, _c(sd, x, "conv1", 1, 1), "bn1"))
    for li in range(1, 5):
        for bi in range(2):
            p, s = f"layer{li}.{bi}", 2 if li > 1 and bi == 0 else 1
            o = F.relu(_b(sd, _c(sd, out, f"{p}.conv1", s, 1), f"{p}.bn1"))
            o = _b(sd, _c(sd, o, f"{p}.conv2", 1, 1), f"{p}.bn2")
            if f"{p}.shortcut.0.weight" in sd:
                o = o + _b(sd, _c(sd, out, f"{p}.shortcut.0", s), f"{p}.shortcut.1")
            else:
                o = o + out
            out = F.relu(o)
    return F.linear(F.avg_pool2d(out, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])


def ref_kuangliu_preact_resnet18(sd, x):
    out = _c(sd, x, "conv1", 1, 1)
    for li in range(1, 5):
        for bi in range(2):
            p, s = f"layer{li}.{bi}", 2 if li > 1 and bi == 0 else 1
            o = F.relu(_b(sd, out, f"{p}.bn1"))
            shortcut = _c(sd, o, f"{p}.shortcut.0", s) if f"{p}.shortcut.0.weight" in sd else out
            o = _c(sd, o, f"{p}.conv1", s, 1)
            o = _c(sd, F.relu(_b(sd, o, f"{p}.bn2")), f"{p}.conv2", 1, 1)
            out = o + shortcut
    return F.linear(F.avg_pool2d(out, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])


def ref_kuangliu_mobilenet_v2(sd, x):
    out = F.relu(_b(sd, _c(sd, x, "conv1", 1, 1), "bn1"))
    i = 0
    for _, _, n, stride in MBV2_CFG:
        for s in [stride] + [1] * (n - 1):
            p = f"layers.{i}"
            planes = sd[f"{p}.conv1.weight"].shape[0]
            o = F.relu(_b(sd, _c(sd, out, f"{p}.conv1"), f"{p}.bn1"))
            o = F.relu(_b(sd, _c(sd, o, f"{p}.conv2", s, 1, groups=planes), f"{p}.bn2"))
            o = _b(sd, _c(sd, o, f"{p}.conv3"), f"{p}.bn3")
            if s == 1:
                sc = (_b(sd, _c(sd, out, f"{p}.shortcut.0"), f"{p}.shortcut.1")
                      if f"{p}.shortcut.0.weight" in sd else out)
                o = o + sc
            out, i = o, i + 1
    out = F.relu(_b(sd, _c(sd, out, "conv2"), "bn2"))
    return F.linear(F.avg_pool2d(out, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])


def ref_chenyaofo_resnet(sd, x, n):
    out = F.relu(_b(sd, _c(sd, x, "conv1", 1, 1), "bn1"))
    for li in range(1, 4):
        for bi in range(n):
            p, s = f"layer{li}.{bi}", 2 if li > 1 and bi == 0 else 1
            o = F.relu(_b(sd, _c(sd, out, f"{p}.conv1", s, 1), f"{p}.bn1"))
            o = _b(sd, _c(sd, o, f"{p}.conv2", 1, 1), f"{p}.bn2")
            identity = (_b(sd, _c(sd, out, f"{p}.downsample.0", s), f"{p}.downsample.1")
                        if f"{p}.downsample.0.weight" in sd else out)
            out = F.relu(o + identity)
    return F.linear(F.adaptive_avg_pool2d(out, 1).flatten(1), sd["fc.weight"], sd["fc.bias"])


def ref_trades_wide_resnet(sd, x, n):
    out = _c(sd, x, "conv1", 1, 1)
    for g, stride in (("block1", 1), ("block2", 2), ("block3", 2)):
        for i in range(n):
            p, s = f"{g}.layer.{i}", stride if i == 0 else 1
            equal = f"{p}.convShortcut.weight" not in sd
            if not equal:
                xin = F.relu(_b(sd, out, f"{p}.bn1"))
                o = xin
            else:
                xin = out
                o = F.relu(_b(sd, out, f"{p}.bn1"))
            o = F.relu(_b(sd, _c(sd, o, f"{p}.conv1", s, 1), f"{p}.bn2"))
            o = _c(sd, o, f"{p}.conv2", 1, 1)
            out = (xin if equal else _c(sd, xin, f"{p}.convShortcut", s)) + o
    out = F.relu(_b(sd, out, "bn1"))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), sd["fc.weight"], sd["fc.bias"])


def ref_dm_wide_resnet(sd, x, n, mean, std):
    out = _c(sd, (x - mean) / std, "init_conv", 1, 1)
    for g, stride in enumerate((1, 2, 2)):
        for i in range(n):
            p, s = f"layer.{g}.block.{i}", stride if i == 0 else 1
            has_shortcut = f"{p}.shortcut.weight" in sd
            if has_shortcut:
                xin = F.silu(_b(sd, out, f"{p}.batchnorm_0"))
                v = xin
            else:
                xin = out
                v = F.silu(_b(sd, out, f"{p}.batchnorm_0"))
            v = F.pad(v, (1, 1, 1, 1) if s == 1 else (0, 1, 0, 1))
            o = F.silu(_b(sd, _c(sd, v, f"{p}.conv_0", s), f"{p}.batchnorm_1"))
            o = _c(sd, o, f"{p}.conv_1", 1, 1)
            out = (_c(sd, xin, f"{p}.shortcut", s) if has_shortcut else xin) + o
    out = F.silu(_b(sd, out, "batchnorm"))
    return F.linear(F.avg_pool2d(out, 8).flatten(1), sd["logits.weight"], sd["logits.bias"])


def _randomise_bn(model, seed=0):
    # random affine and running statistics, so eval-mode BN is not the identity
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if isinstance(m.weight, nn.Parameter):
                with torch.no_grad():
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model


REFERENCE_FORWARDS = {
    "resnet18": (lambda: create_model("resnet18"), ref_kuangliu_resnet18),
    "preact_resnet18": (lambda: create_model("preact_resnet18"), ref_kuangliu_preact_resnet18),
    "mobilenet_v2": (lambda: create_model("mobilenet_v2"), ref_kuangliu_mobilenet_v2),
    "resnet20": (lambda: create_model("resnet20"), lambda sd, x: ref_chenyaofo_resnet(sd, x, 3)),
    # the WideResNet classes behind wrn34_10 / wrn70_16, at a size a CPU test can afford
    # (depth 16: two blocks per stage, so both identity and projection shortcuts run)
    "trades_wrn16_2": (lambda: WideResNet(16, 2, num_classes=10),
                       lambda sd, x: ref_trades_wide_resnet(sd, x, 2)),
    "dm_wrn16_2": (lambda: DMWideResNet(num_classes=10, depth=16, width=2, normalize="cifar100"),
                   lambda sd, x: ref_dm_wide_resnet(
                       sd, x, 2, torch.tensor(DATASET_STATS["cifar100"][0]).view(3, 1, 1),
                       torch.tensor(DATASET_STATS["cifar100"][1]).view(3, 1, 1))),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_FORWARDS))
def test_forward_equals_the_public_forward(name):
    build, reference = REFERENCE_FORWARDS[name]
    torch.manual_seed(0)
    model = _randomise_bn(build()).eval()
    x = torch.rand(2, 3, 32, 32)
    sd = model.state_dict()
    with torch.no_grad():
        ours, public = model(x), reference(sd, x)
    assert public.abs().max() > 1e-3  # a non-degenerate comparison
    torch.testing.assert_close(ours, public, rtol=1e-4, atol=1e-5 * public.abs().max().item())


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------
def test_dataset_stats():
    assert DATASET_STATS["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert DATASET_STATS["cifar100"] == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    assert DATASET_STATS["tinyimagenet"] == ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))
    assert DATASET_STATS["cifar10_legacy"][1] == (0.2023, 0.1994, 0.2010)
    assert DATASET_STATS["tinyimagenet_legacy"][1] == (0.2302, 0.2265, 0.2262)


NORMALIZE_CASES = ["cifar10", "tinyimagenet", ((0.2, 0.4, 0.6), (0.3, 0.5, 0.7))]


@pytest.mark.parametrize("name,normalize", [
    (name, NORMALIZE_CASES[i % len(NORMALIZE_CASES)]) for i, name in enumerate(LIGHT)])
def test_normalised_model_equals_plain_model_on_normalised_input(name, normalize):
    torch.manual_seed(0)
    plain = _randomise_bn(create_model(name)).eval()  # eval-mode BN that is not ~identity
    normed = create_model(name, normalize=normalize).eval()
    assert normed.state_dict().keys() == plain.state_dict().keys()
    normed.load_state_dict(plain.state_dict())  # strict: same keys
    mean, std = DATASET_STATS[normalize] if isinstance(normalize, str) else normalize
    assert normed.normalization == (tuple(mean), tuple(std)) and plain.normalization is None
    x = torch.rand(2, 3, 32, 32)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    seen = []
    stem = next(m for m in normed.modules() if isinstance(m, nn.Conv2d))
    stem.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        torch.testing.assert_close(normed(x), plain((x - mean_t) / std_t), rtol=1e-5, atol=1e-5)
    # and the stem really received the normalised batch (not a no-op on an insensitive net)
    torch.testing.assert_close(seen[0], (x - mean_t) / std_t)


def test_dm_layout_keeps_its_own_statistics():
    m10, m100 = _meta_model("wrn70_16", 10), _meta_model("wrn70_16", 100)
    assert m10.normalization == DATASET_STATS["deepmind_cifar10"]  # DMWideResNet's default (std 0.2471)
    assert m100.normalization == DATASET_STATS["cifar100"]  # RobustBench's CIFAR-100 entries
    assert _meta_model("wrn70_16", 100, normalize="tinyimagenet").normalization == \
        DATASET_STATS["tinyimagenet"]
    assert tuple(m10.mean.shape) == (3, 1, 1) and tuple(m10.std.shape) == (3, 1, 1)

    # identity for the DM layout: still 0/1 tensors, reported as None
    torch.manual_seed(0)
    dm = DMWideResNet(num_classes=10, depth=10, width=1).eval()
    ident = DMWideResNet(num_classes=10, depth=10, width=1).eval().set_normalization(None)
    ident.load_state_dict(dm.state_dict())
    assert ident.normalization is None and torch.equal(ident.std, torch.ones(3, 1, 1))
    x = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DATASET_STATS["deepmind_cifar10"])
    with torch.no_grad():
        torch.testing.assert_close(dm(x), ident((x - mean) / std), rtol=1e-5, atol=1e-5)


def test_normalisation_follows_dtype_and_can_be_changed():
    model = create_model("small_cnn", normalize="cifar10").double()
    assert model.mean.dtype == torch.float64
    model.set_normalization("cifar100")  # created in the model's dtype
    assert model.mean.dtype == torch.float64
    assert model.normalization == DATASET_STATS["cifar100"]
    assert model(torch.rand(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    model.set_normalization(None)
    assert model.mean is None and model.normalization is None
    assert "mean" not in model.state_dict()


@pytest.mark.parametrize("bad,error", [
    ("imagenet21k", ValueError),
    (((0.5, 0.5), (0.5, 0.5)), ValueError),  # 2 channels for a 3-channel model
    (((0.5, 0.5, 0.5), (0.5, 0.0, 0.5)), ValueError),  # std 0
    (((0.5, 0.5, math.nan), (0.5, 0.5, 0.5)), ValueError),
    ((0.5, 0.5), TypeError),
    (0.5, TypeError),
    ((("a", "b", "c"), (1, 1, 1)), TypeError),
])
def test_bad_normalize_is_rejected(bad, error):
    with pytest.raises(error):
        create_model("small_cnn", normalize=bad)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="cifar100"):
        create_model("resnet18", normalize="cifar1000")


# --------------------------------------------------------------------------------------------
# load_weights
# --------------------------------------------------------------------------------------------
def _outputs_equal(a, b, x):
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_load_weights_round_trip_through_a_dataparallel_checkpoint_file(tmp_path):
    torch.manual_seed(0)
    src = _randomise_bn(create_model("resnet20", normalize="cifar10"))
    wrapped = {"state_dict": {"module." + k: v for k, v in src.state_dict().items()},
               "epoch": 7, "best_acc": 0.9}
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    torch.manual_seed(1)
    dst = create_model("resnet20", normalize="cifar10")
    x = torch.rand(2, 3, 32, 32)
    assert not _outputs_equal(src, dst, x)
    assert load_weights(dst, path) is dst
    assert _outputs_equal(src, dst, x)
    assert load_weights(dst, str(path)) is dst  # str paths too


WRAPPERS = {
    "model": lambda sd: {"model": sd, "acc": 1.0},
    "net": lambda sd: {"net": sd, "epoch": 3},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "epoch": 3},
    # nested wrappers and torch.compile + DataParallel prefixes
    "nested": lambda sd: {"model": {"state_dict": {"_orig_mod.module." + k: v
                                                   for k, v in sd.items()}}, "epoch": 3},
}


@pytest.mark.parametrize("wrap", sorted(WRAPPERS))
def test_load_weights_unwraps_common_wrappers(wrap):
    torch.manual_seed(0)
    src = create_model("small_cnn")
    torch.manual_seed(1)
    dst = load_weights(create_model("small_cnn"), WRAPPERS[wrap](src.state_dict()))
    assert _outputs_equal(src, dst, torch.rand(2, 3, 32, 32))


def test_load_weights_into_a_dataparallel_model():
    src = create_model("small_cnn")
    dst = nn.DataParallel(create_model("small_cnn", width=32))
    load_weights(dst, src.state_dict())
    assert torch.equal(dst.module.conv1.weight, src.conv1.weight)


def test_another_architecture_is_a_value_error_naming_keys():
    ckpt = create_model("resnet20").state_dict()
    with pytest.raises(ValueError) as e:
        load_weights(create_model("resnet18"), ckpt)
    msg = str(e.value)
    assert "missing" in msg and "unexpected" in msg and "another architecture" in msg
    # the first few of each kind are named, with the counts
    assert "'layer2.0.shortcut.0.weight'" in msg  # missing: ResNet-18's projection shortcut
    assert "'layer1.2.conv1.weight'" in msg  # unexpected: ResNet-20's third block
    assert "shape mismatch" in msg and "conv1.weight: checkpoint (16, 3, 3, 3) vs model (64, 3, 3, 3)" in msg


def test_other_num_classes_is_a_value_error_that_says_so():
    ckpt = create_model("small_cnn", num_classes=100).state_dict()
    with pytest.raises(ValueError, match="num_classes") as e:
        load_weights(create_model("small_cnn", num_classes=10), ckpt)
    assert "fc.weight" in str(e.value) and "(100, 64)" in str(e.value)


def test_strict_false_ignores_missing_but_not_shape_mismatches():
    sd = create_model("small_cnn").state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    with pytest.raises(ValueError, match="missing"):
        load_weights(create_model("small_cnn"), partial)
    model = load_weights(create_model("small_cnn"), partial, strict=False)
    assert torch.equal(model.conv1.weight, sd["conv1.weight"])
    with pytest.raises(ValueError, match="shape"):
        load_weights(create_model("small_cnn", width=16), sd, strict=False)


def test_old_checkpoints_without_num_batches_tracked_load():
    sd = {k: v for k, v in create_model("small_resnet").state_dict().items()
          if not k.endswith("num_batches_tracked")}
    load_weights(create_model("small_resnet"), sd)


def test_dm_statistics_in_a_checkpoint_are_adopted():
    torch.manual_seed(0)
    src = DMWideResNet(num_classes=10, depth=10, width=1)
    sd = dict(src.state_dict())
    sd["mean"] = torch.tensor(DATASET_STATS["cifar100"][0]).view(3, 1, 1)
    sd["std"] = torch.tensor(DATASET_STATS["cifar100"][1]).view(3, 1, 1)
    dst = load_weights(DMWideResNet(num_classes=10, depth=10, width=1), sd)
    for got, want in zip(dst.normalization, DATASET_STATS["cifar100"]):
        assert got == pytest.approx(want)
    assert "mean" not in dst.state_dict()


class _NotAWeight:
    pass


def test_bad_inputs_to_load_weights(tmp_path):
    model = create_model("small_cnn")
    with pytest.raises(FileNotFoundError):
        load_weights(model, tmp_path / "missing.pt")
    path = tmp_path / "pickle.pt"
    torch.save({"state_dict": model.state_dict(), "args": _NotAWeight()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_weights(model, path)
    with pytest.raises(TypeError, match="epoch"):
        load_weights(model, {"epoch": 3, "weights": model.state_dict()})
    with pytest.raises(TypeError):
        load_weights("resnet18", model.state_dict())
    with pytest.raises(TypeError):
        load_weights(model, 42)


# --------------------------------------------------------------------------------------------
# layout-independent behaviour
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LIGHT + ["trades_wrn16_2", "dm_wrn16_2"])
def test_channels_last_gives_the_same_logits_and_gradients(name):
    torch.manual_seed(0)
    model = (REFERENCE_FORWARDS[name][0]() if name in REFERENCE_FORWARDS else create_model(name))
    model = model.eval()
    x = torch.rand(2, 3, 32, 32)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last).requires_grad_(True)
    out = model(xc)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert xc.grad is not None and torch.isfinite(xc.grad).all()


@pytest.mark.parametrize("name", ["small_cnn", "small_resnet"])
def test_small_models_are_deterministic_and_use_batchnorm(name):
    torch.manual_seed(0)
    a = create_model(name)
    torch.manual_seed(0)
    b = create_model(name)
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(a(x), b(x))  # same seed, same weights, same train-mode logits
    assert torch.equal(a(x), a(x))
    assert any(isinstance(m, nn.BatchNorm2d) for m in a.modules())
    assert not torch.allclose(a.train()(x), a.eval()(x))  # BN: train and eval differ


def test_small_models_width_and_cost():
    assert sum(p.numel() for p in create_model("small_cnn").parameters()) == 57_130
    assert sum(p.numel() for p in create_model("small_resnet").parameters()) == 78_042
    assert create_model("small_cnn", width=8).conv1.weight.shape == (8, 3, 3, 3)
    assert create_model("small_resnet", width=8).fc.weight.shape == (10, 32)
    with pytest.raises(ValueError, match="width"):
        create_model("small_cnn", width=0)
    with pytest.raises(ValueError, match="width"):
        create_model("small_resnet", width=2.5)


def test_forward_rejects_wrong_rank_channels_and_dtype():
    model = create_model("small_cnn")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_bad_wide_resnet_depth():
    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=30)
    with pytest.raises(ValueError, match="6n"):
        DMWideResNet(depth=12)


@pytest.mark.parametrize("name", ["trades_wrn16_2", "dm_wrn16_2"])
@pytest.mark.parametrize("size", SIZES)
def test_wide_resnet_classes_forward_backward_at_small_width(name, size):
    # the classes behind wrn34_10/wrn28_10/wrn70_16 at a width every default run can afford;
    # the registered sizes run the same code in the slow grid above
    torch.manual_seed(0)
    model = REFERENCE_FORWARDS[name][0]().train()
    y = model(torch.rand(2, 3, size, size))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
