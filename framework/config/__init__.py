"""Typed configuration: YAML files and dotted overrides become frozen dataclass trees."""
from framework.config.loading import apply_overrides, check_choices, convert, flatten, from_dict, read_yaml, to_dict

__all__ = ["apply_overrides", "check_choices", "convert", "flatten", "from_dict", "read_yaml", "to_dict"]
