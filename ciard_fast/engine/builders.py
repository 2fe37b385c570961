"""Turn config entries into objects: the data splits, models on the device, loaders."""
import dataclasses

import torch

from ..data import load_dataset, make_loader
from ..models import create_model
from ..models.normalization import resolve_normalization
from .precision import use_channels_last


def load_splits(config):
    """{"train", "val" (None when val_size == 0), "test"} ImageDatasets of the configured dataset."""
    split_seed = config.seed if config.split_seed is None else config.split_seed
    kwargs = dict(root=config.data_root, val_size=config.val_size, seed=split_seed, **config.dataset_args)
    splits = {split: load_dataset(config.dataset, split=split, **kwargs) for split in ("train", "test")}
    splits["val"] = load_dataset(config.dataset, split="val", **kwargs) if config.val_size != 0 else None
    return splits


def build_model(name, dataset, normalize, device, config, model_args=None):
    """A registered model for `dataset`'s classes, on `device`. `normalize`: any value
    `resolve_normalization` takes: True (the dataset's mean/std), False/None (raw [0,1] pixels),
    a `DATASET_STATS` name (e.g. "cifar10_legacy") or a (mean, std) pair."""
    stats = resolve_normalization(normalize, dataset)
    model = create_model(name, num_classes=dataset.num_classes, normalize=stats, **(model_args or {}))
    model = model.to(device)
    if use_channels_last(config.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    if config.compile:
        model.compile()  # in place: state_dict keys stay those of the public layouts
    return model


def build_loader(config, dataset, device, train, limit=None, dist=None):
    """Training loader (shuffled, augmented, drop_last) or an evaluation loader (ordered, all).

    Under torch.distributed each rank gets its shard and `batch_size / world_size` images per
    batch, so `batch_size` is the global batch whatever the number of processes."""
    world_size, rank = (dist.world_size, dist.rank) if dist is not None else (1, 0)
    if limit is not None and limit < len(dataset):
        dataset = dataclasses.replace(dataset, images=dataset.images[:limit], labels=dataset.labels[:limit])
    return make_loader(
        config.loader, dataset, batch_size=config.batch_size // world_size, device=device, shuffle=train,
        augment=train and (config.crop_padding > 0 or config.flip), crop_padding=config.crop_padding,
        flip=config.flip, drop_last=train, seed=config.seed, channels_last=use_channels_last(config.channels_last, device),
        rank=rank, world_size=world_size,
    )


def build_fresh_networks(specs, config, dataset, device):
    """{role: model} of the networks a method declares fresh (`Network.fresh`, e.g. a peer trained
    beside the student): each built like the student — its declared model, or the student's
    architecture and arguments — with the student's normalisation, on `device`. Built after the
    student, so the student's initialisation does not depend on them. A resume loads their
    weights from the checkpoint."""
    networks = {}
    for spec in specs:
        if spec.source != "fresh":
            continue
        name = spec.model or config.student
        args = dict(spec.model_args) if spec.model_args is not None else (
            dict(config.student_args) if spec.model is None else {})
        networks[spec.role] = build_model(name, dataset, config.student_normalize, device, config, args)
    return networks
