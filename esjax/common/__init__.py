"""Helpers every layer may use: ``files`` (atomic outputs, modes), ``schedules`` (step-size schedules),
``strict`` (dataclasses from dicts that refuse unknown keys)."""
