"""`python -m lottery_kd.bootstrap`: the short name of lottery_kd.analysis.bootstrap."""

import sys

from lottery_kd.analysis.bootstrap import main

if __name__ == "__main__":
    sys.exit(main())
