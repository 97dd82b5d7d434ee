"""
Declare a node's parameters from one table, with descriptors, and read them once.

A node lists `ParameterSpec`s in one place; `declare_parameters` declares each with a
`ParameterDescriptor` (description, range, read-only) and returns the values by name.
Wrong types and out-of-range overrides become a `ParameterError` naming the parameter,
so the node can exit with one clear line instead of a traceback.
"""

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Union

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node


class ParameterError(ValueError):
    """A parameter (or a combination of parameters) is invalid; the node cannot start."""


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: name, default (its type is the parameter's type) and description."""

    name: str
    default: Union[bool, int, float, str]
    description: str
    # inclusive range for int and float parameters (None: unbounded)
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    # read once at start-up, so changing it later would silently do nothing
    read_only: bool = True

    def __post_init__(self):
        if (self.minimum is None) != (self.maximum is None):
            raise TypeError(f'parameter {self.name}: give both ends of the range or neither')
        if self.minimum is not None and isinstance(self.default, (bool, str)):
            raise TypeError(f'parameter {self.name}: only numbers take a range')

    def descriptor(self) -> ParameterDescriptor:
        """Return the ParameterDescriptor advertised for this parameter."""
        descriptor = ParameterDescriptor(description=self.description,
                                         read_only=self.read_only)
        if self.minimum is None:
            return descriptor
        if isinstance(self.default, int):
            descriptor.integer_range = [IntegerRange(
                from_value=int(self.minimum), to_value=int(self.maximum), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(self.minimum), to_value=float(self.maximum), step=0.0)]
        return descriptor


def declare_parameters(node: Node, specs: Iterable[ParameterSpec]) -> Dict[str, Any]:
    """Declare every spec on `node` and return {name: value}; ParameterError if invalid."""
    values = {}
    for spec in specs:
        try:
            values[spec.name] = node.declare_parameter(
                spec.name, spec.default, spec.descriptor()).value
        except InvalidParameterTypeException as exc:
            hint = ' (write a double with a decimal point, e.g. 10.0)' \
                if isinstance(spec.default, float) else ''
            raise ParameterError(f'parameter {spec.name} must be of type '
                                 f'{type(spec.default).__name__}{hint}: {exc}') from exc
        except InvalidParameterValueException as exc:
            raise ParameterError(f'parameter {spec.name} must lie in '
                                 f'[{spec.minimum}, {spec.maximum}]: {exc}') from exc
    return values
