"""Configuration: one pydantic-settings class, environment prefix ``HATZ_``."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
