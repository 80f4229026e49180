"""The one error type of every config file (providers, pricing, keys)."""


class ConfigError(ValueError):
    """A config file is unusable; the message says which file, entry and field."""
