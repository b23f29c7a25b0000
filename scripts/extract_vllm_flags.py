#!/usr/bin/env python3
"""Extract the option strings ``vllm serve`` accepts from a vLLM wheel, without importing vLLM.

Usage::

    pip download --no-deps -d /tmp/vllm-wheel vllm==0.12.0
    python scripts/extract_vllm_flags.py /tmp/vllm-wheel/vllm-0.12.0-*.whl \\
        > src/mlctl/data/vllm-0.12.0-serve-flags.txt

vLLM needs torch and CUDA to import, so this reads the wheel's sources with ``ast``
and re-derives what ``vllm serve``'s argument parser registers:

* ``make_arg_parser`` (``vllm/entrypoints/openai/cli_args.py``): its own
  ``add_argument`` calls, then ``FrontendArgs.add_cli_args`` (one ``--field-name``
  per dataclass field of ``FrontendArgs``) and ``AsyncEngineArgs.add_cli_args``
  (``vllm/engine/arg_utils.py``: ``EngineArgs.add_cli_args`` plus its own two).
* every literal option string of every ``add_argument`` call in those functions
  (long and short: ``--tensor-parallel-size``, ``-tp``);
* ``--no-X`` for every long ``--X`` whose action is ``argparse.BooleanOptionalAction``:
  given explicitly, or chosen by ``get_kwargs`` (``_compute_kwargs``) because the
  config dataclass field's type contains ``bool`` and no dataclass;
* ``-h``/``--help`` (argparse's own).

Underscore spellings (``--max_model_len``) are not listed: FlexibleArgumentParser
rewrites ``_`` to ``-`` in every ``--name`` before parsing (mlctl.engine_cli encodes
that rule).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import re
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CLI_ARGS = "vllm/entrypoints/openai/cli_args.py"
ARG_UTILS = "vllm/engine/arg_utils.py"
SERVE = "vllm/entrypoints/cli/serve.py"
CONFIG_DIR = "vllm/config/"
BOOL_ACTION = "BooleanOptionalAction"


class ExtractionError(Exception):
    """The sources no longer look the way this script expects."""


@dataclass
class Sources:
    """Parsed modules and what they define."""

    modules: dict[str, ast.Module]
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)
    aliases: dict[str, ast.expr] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for tree in self.modules.values():
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    self.classes.setdefault(node.name, node)
                elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target = node.targets[0]
                    if isinstance(target, ast.Name):
                        self.aliases.setdefault(target.id, node.value)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    if node.value is not None and "TypeAlias" in ast.unparse(node.annotation):
                        self.aliases.setdefault(node.target.id, node.value)
                elif type(node).__name__ == "TypeAlias":  # `type X = ...` (Python 3.12+)
                    name, value = getattr(node, "name", None), getattr(node, "value", None)
                    if isinstance(name, ast.Name) and isinstance(value, ast.expr):
                        self.aliases.setdefault(name.id, value)

    def is_dataclass(self, name: str) -> bool:
        cls = self.classes.get(name)
        if cls is None:
            return False
        return any("dataclass" in ast.unparse(d) for d in cls.decorator_list)

    def fields(self, class_name: str) -> dict[str, ast.expr]:
        """A dataclass's fields (name -> annotation), base classes first."""
        cls = self.classes.get(class_name)
        if cls is None:
            raise ExtractionError(f"class {class_name} not found in the parsed sources")
        out: dict[str, ast.expr] = {}
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in self.classes:
                out.update(self.fields(base.id))
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                ann = ast.unparse(node.annotation)
                if ann.startswith(("ClassVar", "InitVar")):
                    continue
                out[node.target.id] = node.annotation
        return out

    def function(self, module: str, qualname: str) -> ast.FunctionDef:
        tree = self.modules[module]
        parts = qualname.split(".")
        body: list[ast.stmt] = tree.body
        found: ast.AST | None = None
        for part in parts:
            found = next(
                (
                    n
                    for n in body
                    if isinstance(n, ast.ClassDef | ast.FunctionDef) and n.name == part
                ),
                None,
            )
            if found is None:
                raise ExtractionError(f"{qualname} not found in {module}")
            body = found.body  # type: ignore[attr-defined]
        assert isinstance(found, ast.FunctionDef)
        return found


def type_hints(expr: ast.expr, src: Sources, seen: frozenset[str] = frozenset()) -> list[ast.expr]:
    """Flatten ``X | Y``, ``Optional``, ``Union``, ``Annotated`` and aliases (get_type_hints)."""
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return type_hints(expr.left, src, seen) + type_hints(expr.right, src, seen)
    if isinstance(expr, ast.Subscript):
        head = ast.unparse(expr.value).rsplit(".", 1)[-1]
        items = expr.slice.elts if isinstance(expr.slice, ast.Tuple) else [expr.slice]
        if head == "Annotated":
            return type_hints(items[0], src, seen)
        if head in ("Union", "Optional"):
            return [h for item in items for h in type_hints(item, src, seen)]
        return [expr]
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return type_hints(ast.parse(expr.value, mode="eval").body, src, seen)
    if isinstance(expr, ast.Name) and expr.id in src.aliases and expr.id not in seen:
        if expr.id not in src.classes:
            return type_hints(src.aliases[expr.id], src, seen | {expr.id})
    return [expr]


def field_is_bool_action(annotation: ast.expr, src: Sources) -> bool:
    """Whether ``get_kwargs`` gives this field ``action=BooleanOptionalAction``.

    Mirrors ``_compute_kwargs``: a dataclass among the hints wins (JSON type), then
    ``contains_type(type_hints, bool)``.
    """
    hints = type_hints(annotation, src)
    names = [h.id for h in hints if isinstance(h, ast.Name)]
    if any(src.is_dataclass(n) for n in names):
        return False
    return "bool" in names


@dataclass
class Registered:
    """Option strings and whether each ``add_argument`` call is a BooleanOptionalAction."""

    options: list[tuple[list[str], bool]] = field(default_factory=list)


def _kwargs_var_classes(func: ast.FunctionDef) -> dict[str, str]:
    """``model_kwargs = get_kwargs(ModelConfig)`` -> {"model_kwargs": "ModelConfig"}."""
    out: dict[str, str] = {}
    for node in ast.walk(func):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func).endswith("get_kwargs")
            and node.value.args
            and isinstance(node.value.args[0], ast.Name)
        ):
            out[node.targets[0].id] = node.value.args[0].id
    return out


def _action_overrides(func: ast.FunctionDef) -> dict[tuple[str, str], str]:
    """``frontend_kwargs["x"]["action"] = Y`` -> {("frontend_kwargs", "x"): "Y"}."""
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(func):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        t = node.targets[0]
        if (
            isinstance(t, ast.Subscript)
            and isinstance(t.slice, ast.Constant)
            and t.slice.value == "action"
            and isinstance(t.value, ast.Subscript)
            and isinstance(t.value.value, ast.Name)
            and isinstance(t.value.slice, ast.Constant)
        ):
            out[(t.value.value.id, str(t.value.slice.value))] = ast.unparse(node.value)
    return out


def _splatted_field(expr: ast.expr) -> tuple[str, str, ast.Dict | None] | None:
    """``**x_kwargs["f"]`` or ``**{**x_kwargs["f"], "default": None}`` -> (var, field, dict)."""
    outer: ast.Dict | None = None
    if isinstance(expr, ast.Dict):
        outer = expr
        inner = [v for k, v in zip(expr.keys, expr.values, strict=True) if k is None]
        if len(inner) != 1:
            return None
        expr = inner[0]
    if (
        isinstance(expr, ast.Subscript)
        and isinstance(expr.value, ast.Name)
        and isinstance(expr.slice, ast.Constant)
    ):
        return expr.value.id, str(expr.slice.value), outer
    return None


def add_argument_calls(func: ast.FunctionDef) -> Iterator[ast.Call]:
    for node in ast.walk(func):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            yield node


def registered_options(func: ast.FunctionDef, src: Sources) -> Registered:
    """Every option string ``func`` registers, with its BooleanOptionalAction-ness."""
    var_classes = _kwargs_var_classes(func)
    overrides = _action_overrides(func)
    out = Registered()
    loop_calls: set[int] = set()
    # for key, value in frontend_kwargs.items(): group.add_argument(f"--{key...}", **value)
    for loop in ast.walk(func):
        if not (
            isinstance(loop, ast.For)
            and isinstance(loop.iter, ast.Call)
            and isinstance(loop.iter.func, ast.Attribute)
            and loop.iter.func.attr == "items"
            and isinstance(loop.iter.func.value, ast.Name)
        ):
            continue
        var = loop.iter.func.value.id
        calls = [c for stmt in loop.body for c in add_argument_calls(stmt)]  # type: ignore[arg-type]
        for call in calls:
            if not (call.args and isinstance(call.args[0], ast.JoinedStr)):
                raise ExtractionError(f"unexpected add_argument in a loop: {ast.unparse(call)}")
            pattern = ast.unparse(call.args[0])
            if "replace('_', '-')" not in pattern or not pattern[2:].startswith("--{"):
                raise ExtractionError(f"unexpected option pattern {pattern}")
            loop_calls.add(id(call))
            cls = var_classes[var]
            for name, annotation in src.fields(cls).items():
                action = overrides.get((var, name))
                is_bool = (
                    action.endswith(BOOL_ACTION)
                    if action is not None
                    else field_is_bool_action(annotation, src)
                )
                out.options.append(([f"--{name.replace('_', '-')}"], is_bool))
    for call in add_argument_calls(func):
        if id(call) in loop_calls:
            continue
        opts = [
            a.value
            for a in call.args
            if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-")
        ]
        if not opts:
            continue  # a positional (model_tag)
        if len(opts) != len(call.args):
            raise ExtractionError(f"non-literal option string in {ast.unparse(call)}")
        is_bool: bool | None = None
        for kw in call.keywords:
            if kw.arg == "action":
                is_bool = ast.unparse(kw.value).endswith(BOOL_ACTION)
            elif kw.arg is None:
                splat = _splatted_field(kw.value)
                if splat is None:
                    raise ExtractionError(f"cannot read **kwargs of {ast.unparse(call)}")
                var, name, outer = splat
                if outer is not None and any(
                    isinstance(k, ast.Constant) and k.value == "action" for k in outer.keys
                ):
                    raise ExtractionError(f"action overridden inline in {ast.unparse(call)}")
                if is_bool is None:
                    action = overrides.get((var, name))
                    if action is not None:
                        is_bool = action.endswith(BOOL_ACTION)
                    else:
                        annotation = src.fields(var_classes[var]).get(name)
                        if annotation is None:
                            raise ExtractionError(f"{var_classes[var]} has no field {name}")
                        is_bool = field_is_bool_action(annotation, src)
        out.options.append((opts, bool(is_bool)))
    return out


def option_strings(src: Sources) -> set[str]:
    """All option strings of ``vllm serve``."""
    serve = ast.unparse(src.modules[SERVE])
    if "make_arg_parser(serve_parser)" not in serve:
        raise ExtractionError("serve.py no longer builds its parser with make_arg_parser")
    make = src.function(CLI_ARGS, "make_arg_parser")
    body = ast.unparse(make)
    for needed in ("FrontendArgs.add_cli_args(parser)", "AsyncEngineArgs.add_cli_args(parser)"):
        if needed not in body:
            raise ExtractionError(f"make_arg_parser no longer calls {needed}")
    async_add = src.function(ARG_UTILS, "AsyncEngineArgs.add_cli_args")
    if "EngineArgs.add_cli_args(parser)" not in ast.unparse(async_add):
        raise ExtractionError("AsyncEngineArgs.add_cli_args no longer calls EngineArgs'")
    funcs = [
        make,
        src.function(CLI_ARGS, "FrontendArgs.add_cli_args"),
        async_add,
        src.function(ARG_UTILS, "EngineArgs.add_cli_args"),
    ]
    out = {"-h", "--help"}
    for func in funcs:
        for opts, is_bool in registered_options(func, src).options:
            out.update(opts)
            if is_bool:
                out.update(f"--no-{o[2:]}" for o in opts if o.startswith("--"))
    return out


def load_sources(wheel: Path) -> Sources:
    modules: dict[str, ast.Module] = {}
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        wanted = [CLI_ARGS, ARG_UTILS, SERVE] + [
            n for n in names if n.startswith(CONFIG_DIR) and n.endswith(".py")
        ]
        for name in wanted:
            if name not in names:
                raise ExtractionError(f"{name} is not in {wheel.name}")
            modules[name] = ast.parse(zf.read(name).decode("utf-8"), filename=name)
    return Sources(modules)


def wheel_version(wheel: Path) -> str:
    m = re.match(r"vllm-([^-]+)-", wheel.name)
    if m is None:
        raise ExtractionError(f"{wheel.name} is not named like a vLLM wheel")
    return m.group(1)


def render(wheel: Path, options: set[str]) -> str:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    version = wheel_version(wheel)
    header = [
        f"# vLLM {version}: the option strings `vllm serve` accepts "
        "(argparse, FlexibleArgumentParser).",
        f"# wheel: {wheel.name}",
        f"# sha256: {digest}",
        f"# fetched with: pip download --no-deps -d /tmp/vllm-wheel vllm=={version}",
        f"# produced by: python scripts/extract_vllm_flags.py /tmp/vllm-wheel/{wheel.name}"
        f" > src/mlctl/data/vllm-{version}-serve-flags.txt",
        f"# date: {datetime.date.today().isoformat()}",
        "# Static extraction (ast, no import): make_arg_parser + FrontendArgs/EngineArgs/"
        "AsyncEngineArgs.add_cli_args,",
        "# --no-X for every BooleanOptionalAction, -h/--help. Not covered: options added "
        "at run time by",
        "# vLLM general plugins (load_general_plugins) or an out-of-tree platform's "
        "pre_register_and_update",
        "# (the in-tree platforms add none). Underscore spellings are implied: "
        "FlexibleArgumentParser turns",
        "# `_` into `-` in every --name; argparse also accepts unambiguous prefixes "
        "(allow_abbrev).",
        f"# {len(options)} option strings:",
    ]
    return "\n".join(header + sorted(options)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="a downloaded vllm-*.whl")
    args = parser.parse_args(argv)
    try:
        options = option_strings(load_sources(args.wheel))
    except (ExtractionError, OSError, zipfile.BadZipFile) as exc:
        print(f"extract_vllm_flags: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(args.wheel, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
