"""Safe, vectorised expressions on branches: selection cuts, labels and weights.

``"nJet >= 4 and count(Jet_btagDeepB > 0.5) >= 2"`` is parsed with :mod:`ast`, checked
against a small grammar (arithmetic, comparisons, boolean logic, a whitelist of
functions, a constant index into a list), and evaluated on whole awkward/numpy columns
at once: never ``eval``, never a loop over events. Lists are reduced per event with
``sum``, ``count``, ``any``, ``all``, ``min``, ``max``, ``num``; ``Jet_pt[0]`` is the
leading value (NaN when the list is shorter). An expression must give one value per
event.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

import awkward as ak
import numpy as np

from mlaas4hep.errors import ExpressionError

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
    ast.BitAnd: np.logical_and,
    ast.BitOr: np.logical_or,
    ast.BitXor: np.logical_xor,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


def _reduce(fn: Callable[..., Any], empty: float | None = None) -> Callable[[Any], Any]:
    def apply(x: Any) -> Any:
        if _is_jagged(x):
            out = fn(x, axis=1)
            if empty is not None:
                out = ak.fill_none(out, empty)
            return out
        return x

    return apply


def _elementwise_or_reduce(reducer: Callable[[Any], Any], pairwise: Any) -> Callable[..., Any]:
    def apply(*args: Any) -> Any:
        if len(args) == 1:
            return reducer(args[0])
        if len(args) == 2:
            return pairwise(*args)
        raise ExpressionError("min/max take one list or two values")

    return apply


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": np.absolute,
    "sqrt": np.sqrt,
    "log": np.log,
    "exp": np.exp,
    "sin": np.sin,
    "cos": np.cos,
    "tanh": np.tanh,
    "sum": _reduce(ak.sum),
    "count": _reduce(ak.count_nonzero),
    "any": _reduce(ak.any),
    "all": _reduce(ak.all),
    "num": lambda x: ak.num(x, axis=1),
    "min": _elementwise_or_reduce(_reduce(ak.min, np.nan), np.minimum),
    "max": _elementwise_or_reduce(_reduce(ak.max, np.nan), np.maximum),
    "where": lambda c, a, b: ak.where(c, a, b),
}


def _is_jagged(x: Any) -> bool:
    return isinstance(x, ak.Array) and x.ndim > 1


class Expression:
    """A parsed expression; ``names`` are the branches it reads, ``evaluate`` runs it."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ExpressionError("an expression must be a non-empty string")
        self.text = text
        try:
            self._tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            raise ExpressionError(f"invalid expression {text!r}: {err.msg}") from err
        self._check(self._tree.body)

    @cached_property
    def names(self) -> list[str]:
        """The branch names the expression reads, in order of first appearance."""
        found = sorted(
            (node.col_offset, node.id)
            for node in ast.walk(self._tree)
            if isinstance(node, ast.Name) and node.id not in _FUNCTIONS
        )
        return list(dict.fromkeys(name for _, name in found))

    def _check(self, node: ast.AST) -> None:
        allowed = (
            ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Name, ast.Constant,
            ast.Call, ast.Subscript, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd,
            ast.Invert, ast.Load, *_BINARY, *_COMPARE,
        )  # fmt: skip
        for child in ast.walk(node):
            if not isinstance(child, allowed):
                raise ExpressionError(
                    f"{type(child).__name__} is not allowed in expression {self.text!r}"
                )
            if isinstance(child, ast.Call):
                if not isinstance(child.func, ast.Name) or child.func.id not in _FUNCTIONS:
                    raise ExpressionError(
                        f"unknown function in {self.text!r}; allowed: {', '.join(_FUNCTIONS)}"
                    )
                if child.keywords:
                    raise ExpressionError(f"keyword arguments are not allowed in {self.text!r}")
            if isinstance(child, ast.Constant) and not isinstance(child.value, (int, float)):
                raise ExpressionError(f"only numeric constants are allowed in {self.text!r}")
            if isinstance(child, ast.Subscript) and not (
                isinstance(child.slice, ast.Constant)
                and isinstance(child.slice.value, int)
                and child.slice.value >= 0
            ):
                raise ExpressionError(f"only a constant index such as x[0] in {self.text!r}")

    def check_names(self, available: Any, where: str = "the dataset") -> None:
        """Raise a clear error if the expression reads a branch that is not available."""
        missing = [name for name in self.names if name not in available]
        if missing:
            raise ExpressionError(
                f"expression {self.text!r} reads unknown branch(es) {', '.join(missing)} of {where}"
            )

    def evaluate(self, columns: Mapping[str, Any]) -> np.ndarray:
        """One value per event, as a numpy array."""
        self.check_names(columns, "the chunk")
        try:
            result = self._eval(self._tree.body, columns)
        except ExpressionError:
            raise
        except (ValueError, TypeError) as err:
            raise ExpressionError(f"cannot evaluate {self.text!r}: {err}") from err
        if _is_jagged(result):
            raise ExpressionError(
                f"expression {self.text!r} gives a list per event; reduce it with "
                "any(), all(), sum(), count(), min(), max() or an index such as x[0]"
            )
        if np.ndim(result) == 0:
            n = len(next(iter(columns.values()))) if columns else 0
            return np.full(n, result)
        return np.asarray(ak.to_numpy(result) if isinstance(result, ak.Array) else result)

    def _eval(self, node: ast.AST, columns: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return columns[node.id]
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](
                self._eval(node.left, columns), self._eval(node.right, columns)
            )
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, columns)
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return np.logical_not(value)
            return np.negative(value) if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BoolOp):
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            result = self._eval(node.values[0], columns)
            for value in node.values[1:]:
                result = combine(result, self._eval(value, columns))
            return result
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, columns)
            result = None
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comparator, columns)
                part = _COMPARE[type(op)](left, right)
                result = part if result is None else np.logical_and(result, part)
                left = right
            return result
        if isinstance(node, ast.Call):
            args = [self._eval(arg, columns) for arg in node.args]
            return _FUNCTIONS[node.func.id](*args)  # type: ignore[union-attr]
        if isinstance(node, ast.Subscript):
            value = self._eval(node.value, columns)
            index = node.slice.value  # type: ignore[union-attr]
            if not _is_jagged(value):
                raise ExpressionError(f"only lists can be indexed in {self.text!r}")
            padded = ak.pad_none(value, index + 1, axis=1)[:, index]
            return ak.fill_none(padded, np.nan)
        raise ExpressionError(f"unsupported syntax in {self.text!r}")  # pragma: no cover

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"
