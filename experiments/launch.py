"""Shared command line: --workdir and --config.KEY=VALUE overrides, then run the study."""

from __future__ import annotations

import sys
from typing import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags


def main_for(get_config: Callable[[], ml_collections.ConfigDict], default_workdir: str) -> None:
    """Define the flags for `get_config()` and run `lottery_kd.lottery.run` under absl."""
    config_flags.DEFINE_config_dict("config", get_config(), "experiment config (see get_config)")
    flags.DEFINE_string("workdir", default_workdir, "where results and checkpoints go; "
                        "rerunning the same command there resumes")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
            logging.set_verbosity(logging.WARNING)
        from lottery_kd import lottery, parallel
        from lottery_kd.config import ConfigError, validate
        from lottery_kd.data import DataError
        try:
            validate(flags.FLAGS.config)
            parallel.initialize_from_config(flags.FLAGS.config.parallel)  # before any JAX work
            lottery.run(flags.FLAGS.config, flags.FLAGS.workdir)
        except (ConfigError, DataError, lottery.WorkdirConfigMismatch) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    app.run(main)
