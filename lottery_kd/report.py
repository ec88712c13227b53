"""`python -m lottery_kd.report`: the short name of lottery_kd.analysis.report."""

import sys

from lottery_kd.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
