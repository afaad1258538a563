"""Small validators of user input, shared by every layer (on the ground floor)."""

from __future__ import annotations

from modelhopper.errors import ConfigError, ModelHopperError

__all__ = ["check_bool", "check_int"]


def check_int(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    example: str | None = None,
    error: type[ModelHopperError] = ConfigError,
) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``; else ``error`` naming the
    argument, the rule, the value received and, if given, an ``example`` of a good one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = f"; e.g. {example}" if example else ""
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is True or False; else a ConfigError naming the argument."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value
