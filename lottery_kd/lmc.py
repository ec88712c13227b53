"""`python -m lottery_kd.lmc`: the short name of lottery_kd.analysis.lmc."""

import sys

from lottery_kd.analysis.lmc import main

if __name__ == "__main__":
    sys.exit(main())
