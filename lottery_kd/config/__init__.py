"""The config in one package: defaults, validation, the step plan, protocols and identity.

    defaults     get_config(): every key, documented (the KD-ticket CIFAR-10 settings)
    protocols    the settings of one paper as one named table (kd_ticket, renda, ...)
    validation   checks that run before any compute, one function per config section
    plan         epochs resolved to steps (plan_steps), and the parsing of text settings
    identity     which settings make two runs the same experiment; a study's saved config
"""

from lottery_kd.config.errors import ConfigError  # noqa: F401
from lottery_kd.config.plan import (StepPlan, milestone_epochs, parse_epochs,  # noqa: F401
                                    parse_names, parse_step_count, plan_steps, pruning_levels)
from lottery_kd.config.validation import PRUNE_SCHEDULES, PRUNE_SOURCES, validate  # noqa: F401
