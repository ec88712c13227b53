"""ConfigError: the one exception every bad setting raises (its message: one line per problem)."""


class ConfigError(ValueError):
    """One or more invalid config values (the message has one line per problem)."""
