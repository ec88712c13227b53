"""Protocols: the complete settings of one paper's experiment as one named table.

An experiment picks a protocol as its default (`experiments.cifar10_resnet110`: `kd_ticket`,
`experiments.cifar10_resnet20`: `renda`); `--config.protocol=NAME` switches it, and any
`--config.KEY=VALUE` still overrides one setting. Every run says which protocol it ran and which
of its settings differ from it (`describe`). Add one by registering a `Protocol`:

    from lottery_kd.config import protocols
    protocols.register(protocols.Protocol(
        name="my_paper", paper="Me et al. 2027",
        settings={"cifar10": {"train.epochs": 160, "train.milestones": "80,120"}},
        networks={"cifar10": {"resnet20": "resnet20"}}))

A protocol's settings are complete only for the keys it names; keys it leaves out keep the
experiment's defaults. `notes` state where lottery_kd cannot follow the paper exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import ml_collections

from lottery_kd.registry import Registry

NONE = ""  # config.protocol when a run follows no named protocol


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One paper's settings per data set, and the networks it uses (paper name -> model.name).

    settings: {data set: {flat config key: value}}, e.g. {"cifar10": {"train.epochs": 182}}.
    networks: {data set: {network as the paper names it: lottery_kd model name}}: the paper's
              "resnet110" is `resnet110_bottleneck` in the KD-ticket release.
    notes:    what lottery_kd does differently from the paper's code, stated, not hidden.
    """

    name: str
    paper: str
    settings: Mapping[str, Mapping[str, Any]]
    networks: Mapping[str, Mapping[str, str]]
    notes: tuple[str, ...] = ()

    def datasets(self) -> tuple[str, ...]:
        return tuple(self.settings)

    def settings_for(self, dataset: str) -> dict[str, Any]:
        """{key: value} of the protocol on `dataset`; ValueError naming the data sets it has."""
        if dataset not in self.settings:
            raise ValueError(f"protocol {self.name!r} defines no settings for data.name="
                             f"{dataset!r}; it has: {', '.join(self.datasets())}")
        return {"data.name": dataset, **self.settings[dataset]}

    def model_for(self, dataset: str, network: str) -> str:
        """The model name of the paper's `network` on `dataset` (e.g. resnet110 ->
        resnet110_bottleneck); ValueError listing the paper's networks otherwise."""
        networks = self.networks.get(dataset, {})
        if network not in networks:
            raise ValueError(f"protocol {self.name!r} has no network {network!r} on {dataset}; "
                             f"its networks: {', '.join(networks) or 'none'}")
        return networks[network]

    def apply(self, config: ml_collections.ConfigDict, dataset: str,
              network: Optional[str] = None) -> ml_collections.ConfigDict:
        """Set every setting of the protocol on `dataset` in `config` (and, with `network`, the
        model) and name the protocol in config.protocol; returns `config`."""
        config.update_from_flattened_dict(self.settings_for(dataset))
        if network is not None:
            config.model.name = self.model_for(dataset, network)
        config.protocol = self.name
        return config


@dataclasses.dataclass(frozen=True)
class Deviation:
    """A setting of a run that differs from its protocol's."""

    key: str
    protocol_value: Any
    value: Any

    def __str__(self) -> str:
        return f"{self.key}={self.value!r} (protocol: {self.protocol_value})"


_REGISTRY: Registry[Protocol] = Registry("protocol", "protocol")


def register(protocol: Protocol) -> Protocol:
    """Make `protocol` available by name (config key `protocol`)."""
    return _REGISTRY.add(protocol.name, protocol)


def names() -> tuple[str, ...]:
    """Registered protocol names."""
    return _REGISTRY.names()


def get(name: str) -> Protocol:
    """The protocol registered as `name`; ValueError naming the key `protocol` otherwise."""
    return _REGISTRY.get(name)


def _flat(config: Any) -> dict[str, Any]:
    from lottery_kd.config.identity import config_to_dict, flatten, setting
    flat = flatten(config if isinstance(config, dict) else config_to_dict(config))
    return {key: setting(flat, key) for key in set(flat) | _ADDED}


_ADDED = {"data.validation_split", "data.normalization", "data.crop_scale", "data.crop_ratio"}


def deviations(config: Any) -> list[Deviation]:
    """The settings of `config` (a ConfigDict or a saved config.json dict) that differ from its
    protocol's, in key order; [] without a named protocol."""
    flat = _flat(config)
    name = flat.get("protocol", NONE)
    if name in (NONE, "<unset>"):
        return []
    protocol = get(name)
    dataset = flat["data.name"]
    if dataset not in protocol.settings:
        return [Deviation("data.name", "/".join(protocol.datasets()), dataset)]
    out = [Deviation(key, value, flat.get(key, "<unset>"))
           for key, value in sorted(protocol.settings_for(dataset).items())
           if not _same(flat.get(key, "<unset>"), value)]
    models = protocol.networks.get(dataset, {})
    if flat["model.name"] not in models.values():
        out.append(Deviation("model.name", "one of " + ", ".join(models.values()),
                             flat["model.name"]))
    return sorted(out, key=lambda d: d.key)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def describe(config: Any) -> str:
    """One line: the protocol a run follows and every setting where it departs from it."""
    flat = _flat(config)
    name = flat.get("protocol", NONE)
    if name in (NONE, "<unset>"):
        return "protocol: none (the experiment's own settings)"
    if name not in names():  # a user's protocol, read back by a tool that did not import it
        return (f"protocol: {name} (not registered in this process: import the module that "
                "registers it to compare the settings with it)")
    protocol = get(name)
    differing = deviations(config)
    if not differing:
        return f"protocol: {name} ({protocol.paper}), every setting as published"
    return (f"protocol: {name} ({protocol.paper}); {len(differing)} setting(s) differ: "
            + "; ".join(map(str, differing)))


_CIFAR_TRAINING = {"train.epochs": 182, "train.batch_size": 128, "train.lr": 0.1,
                   "train.momentum": 0.9, "train.weight_decay": 2e-4, "train.lr_decay": 0.1,
                   "train.warmup_epochs": 0, "data.train_subset": 0}
_CIFAR_KD = {"kd.temperature": 5.0, "kd.alpha": 0.9, "kd.reduction": "mean",
             "kd.stop_epoch": None}
_GLOBAL_MAGNITUDE = {"prune.method": "magnitude_global", "prune.distribution": "global",
                     "prune.source": "final"}

KD_TICKET = register(Protocol(
    name="kd_ticket",
    paper="Ma et al. 2021, the KD-ticket release VITA-Group/KD-ticket",
    settings={
        "cifar10": {
            **_CIFAR_TRAINING, **_CIFAR_KD, **_GLOBAL_MAGNITUDE,
            "train.milestones": "90,135",  # lr x0.1 at the start of 0-based epochs 90 and 135
            "data.validation_size": 5000, "data.validation_split": "first",
            "data.normalization": "cifar10_constants",
            # one-shot from the epoch-182 network to 1-0.8^k, k = 1..16, every Conv2d
            "prune.scope": "conv", "prune.schedule": "oneshot", "prune.fraction": 0.2,
            "prune.levels": 16,
            "lottery.rewind": "33ep",  # KD + rewinding: the weights of epoch 33
        },
        "imagenet2012": {
            "train.epochs": 90, "train.batch_size": 512, "train.lr": 0.4,
            "train.momentum": 0.9, "train.weight_decay": 1e-4, "train.lr_decay": 0.1,
            "train.warmup_epochs": 5, "train.milestones": "30,60,80", "data.train_subset": 0,
            "data.validation_size": 0, "data.image_size": 224,
            "data.normalization": "train_statistics",  # ImageNet's channel statistics
            "data.crop_scale": "0.1,1", "data.crop_ratio": "0.8,1.25",
            "kd.temperature": 4.0, "kd.alpha": 0.9, "kd.reduction": "batchmean",
            "kd.stop_epoch": 60, **_GLOBAL_MAGNITUDE,
            # one-shot from the epoch-90 network to 1-0.64^k: 36, 59, 74, 83, 89 %
            "prune.scope": "conv", "prune.schedule": "oneshot", "prune.fraction": 0.36,
            "prune.levels": 5, "lottery.rewind": "6ep",
        },
    },
    networks={"cifar10": {"resnet56": "resnet56_bottleneck",
                          "resnet110": "resnet110_bottleneck"},
              "imagenet2012": {"resnet50": "resnet50"}},
    notes=(
        "CIFAR: the release builds ResNet-56/110 from Bottleneck blocks (depth >= 54) and also "
        "runs a CIFAR ResNet-18 (3x3 stem, no max-pool), which lottery_kd does not have.",
        "CIFAR: the release's sparsity list repeats --percent 0.94502 where its comment says "
        "1-0.8^14 = 0.95602 (exp_res56/res110/res18_oneshot.sh); lottery_kd prunes to "
        "1-0.8^14 there, as the comment intends.",
        "CIFAR: the release's weight-rewinding baseline sweeps rewind epochs 13, 33, ..., 173; "
        "lottery.rewind holds one point (33ep, its KD + rewinding point).",
        "Rewinding: the release builds a fresh SGD (no momentum buffer) when it rewinds; "
        "lottery_kd does the same (the momentum starts at zero in every retrain).",
        "CIFAR: an epoch here is 351 steps of the 45,000 training images (the last partial "
        "batch is dropped, in every lottery_kd run); the release's DataLoader keeps it (352 "
        "steps, the last of 72 images): 63,882 steps in all against 64,064, the rewind point "
        "at step 11,583 against 11,616.",
        "ImageNet: the warm-up is linear per step over 5 epochs here, per epoch "
        "(lr*(e+1)/5) in the release; the release trains in apex fp16, lottery_kd in float32.",
        "ImageNet: the release's rewound runs start at epoch 6 with the original milestones "
        "and no warm-up, as lottery_kd's weight rewinding does.",
    ),
))

RENDA = register(Protocol(
    name="renda",
    paper="Renda, Frankle and Carbin 2020, lottery-ticket/rewinding-iclr20-public",
    settings={
        "cifar10": {
            **_CIFAR_TRAINING, **_GLOBAL_MAGNITUDE,
            # KD settings for the distilled variants: the KD-ticket release's (Renda et al. do
            # not distil)
            **_CIFAR_KD,
            "train.milestones": "91,136",  # boundary_epochs [91, 136]: after 91, 136 epochs
            "data.validation_size": 0, "data.normalization": "per_image",
            # IMP at 20 % of the remaining weights per level, conv layers only: the 1x1
            # projection shortcuts and the fc stay dense
            "prune.scope": "conv_no_shortcut", "prune.schedule": "iterative",
            "prune.fraction": 0.2, "prune.levels": 10,
            "lottery.rewind": "33ep",
        },
    },
    networks={"cifar10": {"resnet20": "resnet20", "resnet56": "resnet56",
                          "resnet110": "resnet110"}},
    notes=(
        "Renda et al.'s TF ResNets also put a 1x1 projection shortcut on the first block of "
        "stage 1 (16 -> 16 channels, stride 1); lottery_kd's CIFAR ResNets use an identity "
        "there (as open_lth and the KD-ticket release do). Under this protocol shortcuts are "
        "not pruned, so the masks are comparable.",
        "Which layers Renda et al.'s published numbers pruned is not settled by their code: its "
        "prune_global_20 pruner (the TPU default) prunes conv layers only, while the README's "
        "commands use prune_all_to_global_80.0 (conv, projections and fc); this protocol "
        "follows the paper's text (conv weights, fc excluded) without the projections.",
        "prune.levels=10 reaches density 0.107, the end of their ResNet-20 and ResNet-110 "
        "tables; their ResNet-56 goes to 0.0225 (17 levels).",
        "Weight rewinding rewinds to one point (lottery.rewind, epoch 33, the KD-ticket "
        "release's point); Renda et al. report the best of several rewinding points.",
        "Renda et al. do not distil; the distilled variants use the KD-ticket release's CIFAR "
        "settings (T=5, alpha=0.9, mean reduction).",
        "An epoch here is 390 steps (the last partial batch of 50,000 / 128 is dropped, in "
        "every lottery_kd run): the LR drops after steps 35,490 and 53,040 and training ends "
        "at 70,980. Renda et al.'s TF input keeps partial batches (390.625 steps an epoch), "
        "drops after steps int(390.625 x 91) = 35,546 and 53,125, and trains 71,108 steps.",
        "Every retrain here starts with zero momentum. Renda et al.'s PruningHook rewinds by "
        "restoring the whole checkpoint with the Estimator's saver, which in TF1 holds the "
        "momentum slots too: their rewound runs most likely resume with that step's momentum.",
        "BatchNorm's running averages use momentum 0.9 here (PyTorch's default and the "
        "KD-ticket release's); Renda et al.'s TF ResNet uses 0.997.",
        "Initialisation: He normal with fan-out here (the KD-ticket release's); Renda et al.'s "
        "convolutions use TF1's variance_scaling_initializer() (scale 1, fan-in, truncated "
        "normal): half the variance where a layer's input and output channels match.",
    ),
))


def experiment_config(protocol: str, *, dataset: str, network: str) -> ml_collections.ConfigDict:
    """The defaults with `protocol`'s settings on `dataset` and the protocol's version of the
    paper's `network` (a network the protocol lacks keeps its own name, and every run lists it
    as a deviation). protocol="" gives the defaults with just the data set and network set."""
    from lottery_kd.config.defaults import get_config
    config = get_config()
    if protocol == NONE:
        config.protocol, config.data.name, config.model.name = NONE, dataset, network
        return config
    chosen = get(protocol)
    chosen.apply(config, dataset)
    config.model.name = chosen.networks.get(dataset, {}).get(network, network)
    return config
