"""The model zoo: public layouts whose checkpoints load strictly, plus small CPU models.

    >>> from ciard_fast.models import create_model, load_weights, list_models
    >>> teacher = create_model("wrn34_10")                       # TRADES keys, raw [0,1] input
    >>> load_weights(teacher, "model_cifar_wrn.pt")              # strict by default
    >>> student = create_model("resnet18", num_classes=100, normalize="cifar100")

Every model takes ``[B, 3, H, W]`` images in [0, 1] (32x32 and 64x64 alike: global average
pooling before the classifier) and returns ``[B, num_classes]`` logits; normalisation happens
inside forward with non-persistent buffers, so ``state_dict()`` keys are the public ones.

| name             | layout (keys of)                                  | params (10 classes) |
|------------------|---------------------------------------------------|---------------------|
| resnet18         | kuangliu/pytorch-cifar ResNet18                   | 11,173,962          |
| preact_resnet18  | kuangliu/pytorch-cifar PreActResNet18             | 11,171,146          |
| mobilenet_v2     | kuangliu/pytorch-cifar MobileNetV2                | 2,296,922           |
| wrn34_10         | yaodongyu/TRADES WideResNet (+ sub_block1 keys)   | 46,160,474          |
| wrn28_10         | yaodongyu/TRADES WideResNet (+ sub_block1 keys)   | 36,479,194          |
| wrn70_16         | RobustBench/DeepMind DMWideResNet, Swish          | 266,796,506         |
| wide_resnet      | TRADES WideResNet, any ``depth``/``widen_factor`` | 46,160,474 (34-10)  |
| dm_wide_resnet   | DeepMind layout, any ``depth``/``width``/``activation`` | 36,479,194 (28-10) |
| resnet56         | chenyaofo/pytorch-cifar-models cifar10_resnet56   | 855,770             |
| resnet20         | chenyaofo/pytorch-cifar-models cifar10_resnet20   | 272,474             |
| small_resnet     | CIFAR ResNet-8, ``width`` (16)                    | 78,042              |
| small_cnn        | 3 conv-BN-ReLU, ``width`` (32)                    | 57,130              |

RobustBench zoo entries by name (offline, from a ``models/`` folder RobustBench filled):
``load_robustbench("Zhang2019Theoretically")`` (``ciard_fast.models.robustbench``).
"""
from .base import ImageClassifier
from .normalization import DATASET_STATS, resolve_normalization
from .registry import create_model, list_models, register_model
from .weights import load_weights

# importing a family registers its models
from . import cifar_resnet, dm_wide_resnet, mobilenet_v2, preact_resnet, resnet, small_cnn  # noqa: E402,F401
from . import wide_resnet  # noqa: E402,F401
from .robustbench import load_robustbench  # noqa: E402

__all__ = [
    "DATASET_STATS",
    "ImageClassifier",
    "create_model",
    "list_models",
    "load_robustbench",
    "load_weights",
    "register_model",
    "resolve_normalization",
]
