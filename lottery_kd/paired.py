"""`python -m lottery_kd.paired`: the short name of lottery_kd.analysis.paired."""

import sys

from lottery_kd.analysis.paired import main

if __name__ == "__main__":
    sys.exit(main())
