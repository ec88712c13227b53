"""The base config now lives in the library: lottery_kd.config.defaults (kept for old imports)."""

from lottery_kd.config.defaults import get_config  # noqa: F401
