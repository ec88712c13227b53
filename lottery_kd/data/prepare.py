"""One-time offline preparation of tfds CIFAR datasets from the official binary files.

    python -m lottery_kd.data.prepare cifar10 --from PATH/cifar-10-batches-bin [--data-dir DIR]

Afterwards `--config.data.source=tfds [--config.data.tfds_data_dir=DIR]` reads it with tfds.
"""

from __future__ import annotations

import argparse
import sys

from lottery_kd.data.errors import DataError
from lottery_kd.data.tfds_source import TFDS_CIFAR_NAMES, prepare_from_local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lottery_kd.data.prepare",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=TFDS_CIFAR_NAMES)
    parser.add_argument("--from", dest="local_dir", required=True,
                        help="folder of the official binary files (cifar-10-batches-bin)")
    parser.add_argument("--data-dir", default="",
                        help="tfds data_dir to prepare into "
                             "(default: tfds's, ~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    try:
        path = prepare_from_local(args.name, args.local_dir, args.data_dir or None)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # tfds writes into a temporary folder: nothing half-prepared
        print("interrupted: nothing was prepared; rerun the same command", file=sys.stderr)
        return 130
    print(f"prepared tfds {args.name} in {path}; use --config.data.source=tfds"
          + (f" --config.data.tfds_data_dir={args.data_dir}" if args.data_dir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
