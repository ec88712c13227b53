"""Shared command line: --workdir and --config.KEY=VALUE overrides, then run the study.

`--config.protocol=NAME` switches the experiment to another protocol (lottery_kd.config.
protocols): the experiment's config is rebuilt for it, then every other --config.KEY=VALUE is
applied on top. A misspelt key or a value of the wrong type is refused in one line (exit 2).
"""

from __future__ import annotations

import difflib
import inspect
import shlex
import signal
import sys
from typing import Callable, Optional, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags


class StopOnSignal:
    """Turns SIGTERM/SIGINT (what a preemption sends) into a stop request that training polls,
    so it can save a resume checkpoint and exit cleanly. A second signal exits at once."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self) -> "StopOnSignal":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: saving a resume checkpoint, then "
              "stopping (send it again to stop at once)", file=sys.stderr, flush=True)

    def __call__(self) -> bool:
        return bool(self.signum)

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def invocation() -> list[str]:
    """The command line that started this process (`python -m module ...`)."""
    from lottery_kd.runtime.environment import command_line
    return command_line()


def run_study(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Run or resume a study; returns the process exit code (0 done, non-zero otherwise)."""
    from lottery_kd.study import lottery
    from lottery_kd.runtime import parallel
    from lottery_kd.study.checkpoints import (CheckpointError, ForeignCheckpoint,
                                              quiet_failed_restores)
    from lottery_kd.config import ConfigError, validate
    from lottery_kd.config.identity import SavedConfigError
    from lottery_kd.data import DataError
    from lottery_kd.training.errors import TrainingInterrupted
    from lottery_kd.study.workdir_lock import WorkdirBusy

    resume = f"Resume with the same command:\n  {shlex.join(invocation())}"
    quiet_failed_restores()
    stop = StopOnSignal()
    try:
        validate(config)
        try:
            parallel.initialize_from_config(config.parallel)  # before any JAX work
        except ValueError as error:  # a JAX_* variable standing in for a setting
            raise ConfigError(f"invalid config:\n  {error}") from None
        with stop:
            lottery.run(config, workdir, stop_requested=stop)
    except (ConfigError, DataError, SavedConfigError, WorkdirBusy,
            lottery.WorkdirConfigMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stopped:
        saved = ("every finished run is saved" if stopped.step is None else
                 f"a resume checkpoint was saved in {workdir}/checkpoints")
        print(f"{stopped}; {saved}. {resume}", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGTERM)
    except KeyboardInterrupt:  # a second signal (or Ctrl-C outside the handler): at once
        print(f"stopped at once: every run, snapshot and resume checkpoint written before is "
              f"complete. {resume}", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
    except lottery.TrainingFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except ForeignCheckpoint as error:  # not damage: its own message says what to do
        print(f"error: {error}.", file=sys.stderr)
        return 4
    except CheckpointError as error:
        print(f"error: {error}. Move the damaged checkpoint away (or use a new --workdir) "
              "and rerun.", file=sys.stderr)
        return 4
    except lottery.WorkdirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 5
    except OSError as error:
        print(f"error: {_os_error_message(error, workdir)}", file=sys.stderr)
        return 5
    if stop.signum:  # the stop came after the last run's last step: nothing is left to do
        print(f"stopped: {signal.Signals(stop.signum).name} arrived as the study's last run "
              "was finishing; the study is complete (every row and snapshot saved)",
              file=sys.stderr)
        return 128 + stop.signum
    return 0


def _os_error_message(error: OSError, workdir: str) -> str:
    """An error on a file of the workdir (or a full disk with no file named) names the workdir;
    an error on any other file names that file, and does not blame the workdir."""
    import errno
    from pathlib import Path
    name = getattr(error, "filename", None)
    inside = bool(name) and Path(name).resolve().is_relative_to(Path(workdir).resolve())
    reason = error.strerror or str(error)
    if inside or (not name and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)):
        return (f"cannot write to workdir {workdir}: {reason}"
                f"{f' ({name})' if name else ''}. Every checkpoint and row written before is "
                "complete; fix the cause and rerun the same command to resume.")
    return (f"{reason}{f': {name}' if name else ''}. Fix the cause and rerun the same "
            "command; the study resumes where it stopped.")


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def unknown_config_key(argv: Sequence[str], config: ml_collections.ConfigDict) -> Optional[str]:
    """One line naming the first --config.KEY in `argv` that `config` lacks, and the closest
    key it has; None when every key exists."""
    known = _flat_keys(config)
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        nearest = close or difflib.get_close_matches(key, known, n=1, cutoff=0.0)
        hint = (f"did you mean --config.{close[0]}?" if close else
                f"the closest setting is --config.{nearest[0]} (all of them: "
                "lottery_kd/config/defaults.py)")
        return f"--config.{key}: no such setting; {hint}"
    return None


def _protocol_parameter(get_config: Callable[..., ml_collections.ConfigDict]) -> bool:
    return "protocol" in inspect.signature(get_config).parameters


def resolve_protocol(get_config: Callable[..., ml_collections.ConfigDict],
                     parsed: ml_collections.ConfigDict,
                     overrides: dict) -> ml_collections.ConfigDict:
    """The config to run: `parsed` as is, or, when --config.protocol chose another protocol,
    the experiment's config for that protocol with every other override applied on top.
    ConfigError for a protocol the experiment cannot switch to."""
    from lottery_kd.config import ConfigError
    if "protocol" not in overrides or overrides["protocol"] == get_config().protocol:
        return parsed
    name = overrides["protocol"]
    if not _protocol_parameter(get_config):
        raise ConfigError(f"invalid config:\n  protocol={name!r} is invalid: this experiment "
                          "has its own settings and no protocols to switch to; use "
                          "experiments.cifar10_resnet20/56/110 or imagenet_resnet50")
    try:
        config = get_config(protocol=name)
    except ValueError as error:
        raise ConfigError(f"invalid config:\n  {error}") from None
    config.update_from_flattened_dict({key: value for key, value in overrides.items()
                                       if key != "protocol"})
    return config


def main_for(get_config: Callable[..., ml_collections.ConfigDict], default_workdir: str) -> None:
    """Define the flags for `get_config()` and run `lottery_kd.study.lottery.run` under absl."""
    from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning
    reexec_with_malloc_tuning()  # keeps XLA:CPU's step buffers mapped (results unchanged)
    problem = unknown_config_key(sys.argv, get_config())  # config_flags reads argv right here
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    config_flags.DEFINE_config_dict("config", get_config(), "experiment config (see get_config)")
    flags.DEFINE_string("workdir", default_workdir, "where results and checkpoints go; "
                        "rerunning the same command there resumes")

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except (flags.Error, ValueError, TypeError, AttributeError) as error:
            print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
            sys.exit(2)

    def main(argv):
        from lottery_kd.config import ConfigError
        if len(argv) > 1:
            print(f"error: unexpected arguments: {' '.join(argv[1:])} (settings are given as "
                  "--config.KEY=VALUE)", file=sys.stderr)
            sys.exit(2)
        if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
            logging.set_verbosity(logging.WARNING)
        try:
            config = resolve_protocol(get_config, flags.FLAGS.config,
                                      config_flags.get_override_values(flags.FLAGS["config"]))
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        sys.exit(run_study(config, flags.FLAGS.workdir))

    app.run(main, flags_parser=parse)
