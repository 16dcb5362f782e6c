"""Strict YAML configs: dataclasses, `yaml.safe_load`-compatible parsing, key=value overrides.

An unknown key is an error that names the key, the file and line, and the closest valid key.
Stage parameter classes come from the stage registry, so a new stage needs no change here.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .registry import did_you_mean


@dataclass
class ModelConfig:
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None  # input checkpoint; omitted when the first stage is `train`


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str | None = None  # --data-dir; None = the embedded data


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    stages: list = field(default_factory=list)  # [(stage name, params dataclass)]


class _Where:
    """Maps a key path like ('stages', 0, 'prune', 'sparsity') to 'file:line'."""

    def __init__(self, source: str, lines: dict):
        self.source, self.lines = source, lines

    def __call__(self, path: tuple) -> str:
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return f"{self.source}:{self.lines[path[:cut]]}"
        return self.source


def _node_lines(node, path=(), out=None) -> dict:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = path + (k.value,)
            out[key] = k.start_mark.line + 1
            _node_lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _node_lines(v, path + (i,), out)
    return out


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _coerce(value: Any, tp: Any, path: tuple, where: _Where) -> Any:
    """Check and convert a YAML value to the annotated type; the error names key and line."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where(path)}: bad value for '{_dotted(path)}'")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        choices = typing.get_args(tp)
        raise UserError(f"{where(path)}: '{_dotted(path)}' is {value!r}{did_you_mean(value, choices)}; choose one of {', '.join(map(str, choices))}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
    elif tp is list or origin is list:
        if isinstance(value, list):
            return value
    elif dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, where)
    else:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise UserError(f"{where(path)}: '{_dotted(path)}' must be {name}, got {value!r}")


def build_dataclass(cls, data: Any, path: tuple = (), where: _Where | None = None):
    """Build `cls` from a mapping, refusing unknown keys and wrongly typed values."""
    where = where or _Where("<config>", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where(path)}: '{_dotted(path) or 'config'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise UserError(
                f"{where(path + (key,))}: unknown key '{_dotted(path + (key,))}'{did_you_mean(key, fields)}; "
                f"valid keys: {', '.join(fields)}"
            )
        kwargs[key] = _coerce(value, hints[key], path + (key,), where)
    try:
        return cls(**kwargs)
    except UserError as e:
        raise UserError(f"{where(path)}: {e}") from None
    except TypeError as e:
        raise UserError(f"{where(path)}: {e}") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set `a.b.0.c=value` entries (value parsed as YAML) into the raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key.path=value")
        dotted, text = item.split("=", 1)
        keys: list[Any] = [int(k) if k.isdigit() else k for k in dotted.split(".")]
        node: Any = raw
        for i, k in enumerate(keys[:-1]):
            nxt = keys[i + 1]
            if isinstance(node, list):
                if not isinstance(k, int) or k >= len(node):
                    raise UserError(f"override '{dotted}': no item {k} at '{_dotted(tuple(keys[:i]))}'")
                node = node[k]
            else:
                if k not in node or node[k] is None:
                    node[k] = [] if isinstance(nxt, int) else {}
                node = node[k]
        last = keys[-1]
        value = yaml.safe_load(text) if text else None
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise UserError(f"override '{dotted}': index out of range")
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise UserError(f"override '{dotted}': '{_dotted(tuple(keys[:-1]))}' is not a mapping")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; every error is a UserError with file:line."""
    from .stages import STAGES  # stage parameter classes are registered there

    p = Path(path)
    if not p.is_file():
        raise UserError(f"config '{p}' not found; check the path")
    text = p.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise UserError(f"{p}: a config must be a mapping with model, data and stages")
    raw = apply_overrides(raw, overrides or [])
    where = _Where(str(p), _node_lines(node) if node is not None else {})
    stage_items = raw.pop("stages", []) or []
    cfg = build_dataclass(RunConfig, raw, (), where)
    if not isinstance(stage_items, list):
        raise UserError(f"{where(('stages',))}: 'stages' must be a list like '- prune: {{sparsity: 0.9}}'")
    stages = []
    for i, item in enumerate(stage_items):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise UserError(f"{where(('stages', i))}: each stage is one 'name: {{params}}' entry")
        (name, params), = item.items()
        if name not in STAGES:
            raise UserError(f"{where(('stages', i, name))}: unknown stage '{name}'{did_you_mean(name, STAGES)}; stages: {', '.join(STAGES)}")
        stage = STAGES.get(name)
        stages.append((name, build_dataclass(stage.params, params or {}, ("stages", i, name), where)))
    cfg.stages = stages
    return cfg
