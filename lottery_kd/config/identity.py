"""Config identity: which settings make two runs the same experiment, and a study's saved config.

A study's `config.json` is its identity: a rerun with other settings in the same workdir is
refused, and every checkpoint carries a digest of the settings that decide results. Settings
added after studies began (ADDED_KEYS) read as the value that reproduces what ran before they
existed, so older workdirs still resume and analyse.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import ml_collections

from lottery_kd.study.workdir import Workdir

# Keys that change no result: how a run is shown or checkpointed, how the work is spread over
# devices and processes (a run may resume on another machine), which one-shot levels run (each
# level's rows are the same whichever others run), and the protocol's name (the settings it
# stands for are compared one by one).
COSMETIC_KEYS = ("log.progress", "log.tensorboard", "parallel.distributed",
                 "parallel.coordinator_address", "parallel.num_processes", "parallel.process_id",
                 "parallel.coordinator_bind_address", "parallel.num_cpu_devices",
                 "checkpoint.every_steps", "checkpoint.keep", "prune.first_level",
                 "prune.only_levels", "protocol")

# How a result is computed, not what it is: each run records the value it ran on (its row's
# `conv_impl`, a KD row's `teacher_logits`) and resumes on it, never switching halfway; a
# relaunch may change it for the runs that start after. The config digest keeps the study's
# first value (config.json's), so the study's snapshots stay valid across a switch.
EXECUTION_KEYS = ("model.conv_impl", "kd.teacher_logits")

# Settings added after studies may have started, with the value that reproduces what ran before
# they existed. A saved config without the key reads as that value, and at that value the key
# is left out of the config digest (stored in every checkpoint), so older workdirs still resume.
ADDED_KEYS = {"model.norm_impl": "flax", "protocol": "",
              "data.validation_split": "random", "data.normalization": "train_statistics",
              "data.crop_scale": "0.08,1", "data.crop_ratio": "3/4,4/3",
              "prune.only_levels": "", "prune.structure": "unstructured",
              "dynamic.start_fraction": 0.25, "train.precision": "float32",
              "kd.teacher_logits": "in_step"}


class SavedConfigError(ValueError):
    """A study's config.json is missing or unreadable."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def config_to_dict(config: Any) -> dict:
    """A config (ml_collections) as the plain JSON dict written to config.json."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def canonical_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config without its added keys at their pre-existing values, and without
    data.validation_split when there is no validation split (it then decides nothing)."""
    return {k: v for k, v in flat.items() if not (k in ADDED_KEYS and v == ADDED_KEYS[k])
            and not (k == "data.validation_split" and flat.get("data.validation_size") == 0)}


def setting(flat: dict[str, Any], key: str) -> Any:
    """The value of `key` in a flattened (possibly older) config: an added key it lacks reads
    as its pre-existing value."""
    return flat.get(key, ADDED_KEYS.get(key, "<unset>"))


def differing_keys(saved: dict, now: dict) -> list[str]:
    """The result-deciding keys whose values differ between two config dicts."""
    saved_flat = canonical_settings(flatten(saved))
    now_flat = canonical_settings(flatten(now))
    return [key for key in sorted(set(saved_flat) | set(now_flat))
            if key not in COSMETIC_KEYS + EXECUTION_KEYS
            and setting(saved_flat, key) != setting(now_flat, key)]


def config_digest(config: Any, saved: Optional[dict] = None) -> str:
    """sha256 of the settings that decide results (cosmetic and placement keys left out), the
    execution keys at their values in `saved` (the study's config.json) when given."""
    flat = {k: v for k, v in canonical_settings(flatten(config_to_dict(config))).items()
            if k not in COSMETIC_KEYS}
    if saved is not None:
        saved_flat = canonical_settings(flatten(saved))
        # every execution key at the study's value, also where the value now asked for is an
        # added key's default (canonical_settings dropped it): switching kd.teacher_logits to
        # in_step, which a full disk asks for, keeps the digest
        flat.update({key: setting(saved_flat, key) for key in EXECUTION_KEYS})
        flat = canonical_settings(flat)  # an execution key added since: out, as it was
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def read_saved(path: str | Path) -> dict:
    """The dict in a study's config.json; SavedConfigError naming the file when it cannot be
    read (missing, truncated, not JSON, not an object)."""
    path = Path(path)
    if not path.is_file():
        raise SavedConfigError(f"{path} is missing: {path.parent} holds no study")
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise SavedConfigError(
            f"{path} cannot be read ({error}); it is the study's identity: restore it from a "
            "backup or a copy of the command's settings, or use another --workdir") from None
    if not isinstance(saved, dict):
        raise SavedConfigError(f"{path} holds no config object; restore it or use another "
                               "--workdir")
    from lottery_kd.config.defaults import get_config
    sections = [key for key, value in get_config().to_dict().items() if isinstance(value, dict)]
    broken = [key for key in sections if key in saved and not isinstance(saved[key], dict)]
    if broken:
        raise SavedConfigError(f"{path}: {', '.join(broken)} should be section(s) of settings "
                               f"({{...}}), not {type(saved[broken[0]]).__name__}; restore the "
                               "file from a backup or a copy of the command's settings")
    return saved


def _merge_into(base: dict, saved: dict) -> None:
    """Overwrite `base` with `saved`, key by key into nested dicts."""
    for key, value in saved.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = value


def load_saved(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a study in `workdir` ran with, from its config.json: keys added since it began
    read as their values from before (ADDED_KEYS), any other missing key as its default."""
    from lottery_kd.config.defaults import get_config
    saved = read_saved(Workdir(workdir).config)
    defaults = get_config()
    defaults.update_from_flattened_dict(ADDED_KEYS)
    settings = defaults.to_dict()
    _merge_into(settings, saved)
    return ml_collections.ConfigDict(settings)
