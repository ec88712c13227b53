"""The data package's user-facing error type, in its own module so every loader can import it."""


class DataError(ValueError):
    """A data setting or data file is wrong; the message says which setting and how to fix it."""
