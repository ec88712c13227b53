"""`python -m lottery_kd.status`: the short name of lottery_kd.analysis.status."""

import sys

from lottery_kd.analysis.status import main

if __name__ == "__main__":
    sys.exit(main())
