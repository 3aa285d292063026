"""The strings ``torch.export.load`` evaluates: sympy ``eval``s every ``expr_str`` of the
graph and ``ep.module()`` executes ``guards_code``. Anything there that is not a plain
expression over sizes and symbols is dangerous."""

from __future__ import annotations

import ast
import re
from typing import Any

from ckpt_inspector.core.findings import DANGEROUS, Finding
from ckpt_inspector.core.tree import Checkpoint

MAX_EXPR_CHARS = 20_000
# What torch writes into expr_str (sympy's srepr: ``Symbol('s31', positive=True, integer=True)``,
# ``Mul(Integer(2), Symbol(...))``) and guards_code: symbols, numbers, operators and calls to
# sympy's constructors and torch.utils._sympy.functions. A string may only name a symbol or
# spell a number: any other sympy function parses a string argument with sympify (an eval).
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+\Z")
_SYMPY_FUNCS = frozenset({
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan",
    "Equality", "Unequality", "And", "Or", "Not", "Piecewise", "ExprCondPair", "ceiling",
    "floor", "sqrt", "Pow", "Mul", "Add", "Integer", "Rational", "Float", "Symbol", "Dummy",
    "Tuple", "oo", "zoo", "nan", "Infinity", "NegativeInfinity", "ComplexInfinity", "NaN",
    "Half", "One", "Zero", "NegativeOne", "true", "false", "True", "False", "pi", "E", "I",
    "BooleanTrue", "BooleanFalse", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
    "BitwiseFn_bitwise_xor", "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_exp", "OpaqueUnaryFn_log",
    "OpaqueUnaryFn_cos", "OpaqueUnaryFn_sin", "OpaqueUnaryFn_tan", "OpaqueUnaryFn_cosh",
    "OpaqueUnaryFn_sinh", "OpaqueUnaryFn_tanh", "OpaqueUnaryFn_asin", "OpaqueUnaryFn_acos",
    "OpaqueUnaryFn_atan", "OpaqueUnaryFn_log2", "math", "inf", "L", "int", "float", "bool",
    "abs", "min", "max", "round", "sym_int", "sym_float", "sym_max", "sym_min", "sym_sqrt",
    "sym_ite", "sym_not",
})
_STRING_CALLS = frozenset({"Symbol", "Dummy", "Integer", "Float", "Rational"})
_TENSOR_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel", "shape",
                           "floor", "ceil", "sqrt", "trunc", "log2", "pow", "isnan", "isinf"})
_OPS = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator,
        ast.unaryop, ast.boolop, ast.cmpop, ast.expr_context, ast.Tuple, ast.keyword)


def _allowed(node: ast.AST, parent: ast.AST | None, guards: bool) -> bool:
    if isinstance(node, _OPS):
        return not (isinstance(node, ast.keyword) and (
            not node.arg or node.arg.startswith("_") or not isinstance(node.value, ast.Constant)
            or isinstance(node.value.value, str)))
    if isinstance(node, ast.Constant):
        if node.value is None or type(node.value) in (int, float, bool):
            return True
        if type(node.value) is not str:
            return False
        if isinstance(parent, ast.Call) and node in parent.args:
            return isinstance(parent.func, ast.Name) and parent.func.id in _STRING_CALLS
        return guards and isinstance(parent, ast.Subscript)
    if isinstance(node, ast.Name):
        return not node.id.startswith("_") and (node.id in _SYMPY_FUNCS
                                                or bool(_SYMBOL.match(node.id)))
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) or (guards and isinstance(node.func, ast.Attribute))
    if guards and isinstance(node, ast.Subscript):
        return True
    return guards and isinstance(node, ast.Attribute) and node.attr in _TENSOR_ATTRS


def unsafe_expression(text: str, guards: bool = False) -> str | None:
    """Why a string torch evaluates (sympy's ``eval`` of ``expr_str``; the ``exec`` of
    ``guards_code``) is not the plain arithmetic torch writes, or None. Only parses it."""
    if len(text) > MAX_EXPR_CHARS:
        return f"{len(text):,} characters, too long to check"
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not an expression torch writes"
    stack: list[tuple[ast.AST, ast.AST | None]] = [(tree, None)]
    while stack:
        node, parent = stack.pop()
        if not _allowed(node, parent, guards):
            what = (getattr(node, "id", None) or getattr(node, "attr", None)
                    or (repr(node.value)[:40] if isinstance(node, ast.Constant) else None)
                    or type(node).__name__)
            return f"it uses {what}"
        stack.extend((child, node) for child in ast.iter_child_nodes(node))
    return None


def check_expressions(ckpt: Checkpoint, model: Any, where: str, limit: int = 100_000) -> None:
    """Findings for the graph's strings that torch evaluates."""
    seen = 0
    stack = [model]
    exprs: list[str] = []
    while stack and seen < limit * 20:
        value = stack.pop()
        seen += 1
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "expr_str" and isinstance(v, str):
                    exprs.append(v)
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, (dict, list)))
    for text in dict.fromkeys(exprs[:limit]):
        why = unsafe_expression(text)
        if why:
            ckpt.findings.append(Finding(
                DANGEROUS, "code-in-expression",
                f"a symbolic expression that torch.export.load hands to sympy (which evaluates "
                f"it as Python) is not plain arithmetic: {why}: {text[:120]!r}", where))
    guards = model.get("guards_code") if isinstance(model, dict) else None
    for text in guards if isinstance(guards, list) else []:
        why = unsafe_expression(str(text), guards=True)
        if why:
            ckpt.findings.append(Finding(
                DANGEROUS, "code-in-expression",
                f"guards_code, which ep.module() executes as Python, is not a plain guard: "
                f"{why}: {str(text)[:120]!r}", where))

