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
from .filekind import wrong_kind
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
    val_split: float = 0.1  # held out of the training data for choosing (auto, joint); the test split only reports
    options: dict = field(default_factory=dict)  # the dataset's own options, e.g. imagefolder: {image_size: 64}


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
            elif isinstance(node, dict):
                if k not in node or node[k] is None:
                    node[k] = [] if isinstance(nxt, int) else {}
                node = node[k]
            else:
                raise UserError(f"override '{dotted}': '{_dotted(tuple(keys[:i]))}' is not a mapping")
        last = keys[-1]
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError as e:
            raise UserError(f"override '{item}': the value is not valid YAML ({getattr(e, 'problem', None) or 'syntax'})") from None
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise UserError(f"override '{dotted}': index out of range")
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise UserError(f"override '{dotted}': '{_dotted(tuple(keys[:-1]))}' is not a mapping")
    return raw


MAX_CONFIG_BYTES = 1 << 20
MAX_NODES = 20_000  # scalars, lists and mappings after alias expansion: far above any real config
MAX_DEPTH = 40


def _check_graph(node, where: str) -> None:
    """Refuse alias bombs (few bytes that expand to millions of values), absurd nesting and
    duplicate keys, walking the composed YAML graph once with a budget."""
    budget = [MAX_NODES]

    def walk(n, depth):
        budget[0] -= 1
        if budget[0] < 0:
            raise UserError(f"{where}: the config expands to more than {MAX_NODES:,} values (a YAML alias bomb?); write it out without '*' aliases")
        if depth > MAX_DEPTH:
            raise UserError(f"{where}:{n.start_mark.line + 1}: values nested more than {MAX_DEPTH} deep; flatten the config")
        if isinstance(n, yaml.MappingNode):
            seen = {}
            for k, v in n.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise UserError(f"{where}:{k.start_mark.line + 1}: key '{key}' appears twice (first on line {seen[key]}); keep one")
                if key is not None:
                    seen[key] = k.start_mark.line + 1
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(n, yaml.SequenceNode):
            for v in n.value:
                walk(v, depth + 1)

    walk(node, 0)


def _parse_yaml(p: Path):
    """(composed node, Python value) of a config file; every failure names the file (and line)."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read config '{p}': {e.strerror}") from None
    elsewhere = wrong_kind(p, "config")
    if elsewhere:
        raise UserError(elsewhere)
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{p}: {len(data):,} bytes is too large for a config (at most {MAX_CONFIG_BYTES:,})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{p}:{line}: not UTF-8 (byte {e.start} is 0x{data[e.start]:02x}); save the file as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_graph(node, str(p))
        return node, loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}{line}: not valid YAML ({problem})") from None
    except RecursionError:
        raise UserError(f"{p}: values nested too deeply to read; flatten the config") from None
    finally:
        loader.dispose()


DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def _check_run(cfg: RunConfig, p: Path, where: _Where, trust: bool) -> None:
    """What `run` would reject, found by `validate`: names, files, devices, seeds and output paths."""
    import re

    from .data import DATASETS, check_val_split
    from .fileio import require_file
    from .models.zoo import check_arch_from_file
    from .stages import STAGES

    if not cfg.stages:
        raise UserError(f"{where(('stages',))}: the config has no stages; add e.g. '- finetune: {{epochs: 1}}' under stages")
    if not re.fullmatch(DEVICE_PATTERN, cfg.device):
        raise UserError(f"{where(('device',))}: device '{cfg.device}' is not auto, cpu, cuda, cuda:N or mps")
    if not 0 <= cfg.seed < 1 << 63:
        raise UserError(f"{where(('seed',))}: seed must be in [0, 2^63), got {cfg.seed}")
    if not cfg.output_dir.strip():
        raise UserError(f"{where(('output_dir',))}: output_dir must be a directory name, got ''")
    if ":" in cfg.data.name:
        if not trust:
            raise UserError(f"{where(('data', 'name'))}: the data factory '{cfg.data.name}' is code named in a file; "
                            "pass --trust to run the config (or --data with the same name)")
    elif cfg.data.name not in DATASETS:
        try:
            DATASETS.get(cfg.data.name)
        except UserError as e:
            raise UserError(f"{where(('data', 'name'))}: {e}") from None
    if not all(isinstance(k, str) and isinstance(v, (str, int, float, bool, type(None))) for k, v in cfg.data.options.items()):
        raise UserError(f"{where(('data', 'options'))}: data options must map names to plain values")
    try:
        check_val_split(cfg.data.val_split)
    except UserError as e:
        raise UserError(f"{where(('data', 'val_split'))}: {e}") from None
    if cfg.data.root is not None and not Path(cfg.data.root).is_dir():
        raise UserError(f"{where(('data', 'root'))}: data.root '{cfg.data.root}' does not exist; give the folder with the dataset files")
    archs = [(("model", "arch"), cfg.model.arch, cfg.model.arch_kwargs)]
    archs += [(("stages", i, n, "arch"), getattr(sp, "arch", None), getattr(sp, "arch_kwargs", None) or cfg.model.arch_kwargs)
              for i, (n, sp) in enumerate(cfg.stages)]
    for key, arch, kwargs in archs:
        if arch is not None:
            try:
                check_arch_from_file(arch, kwargs or {}, where(key), trust=trust, allow="pass --trust to run the config")
            except UserError as e:
                raise UserError(str(e) if where(key) in str(e) else f"{where(key)}: {e}") from None
    first = cfg.stages[0][0]
    if STAGES.get(first).needs_input:
        if not cfg.model.checkpoint:
            raise UserError(f"{where(('model',))}: model.checkpoint is required unless the first stage is 'train'")
        require_file(cfg.model.checkpoint)
    for i, (name, sp) in enumerate(cfg.stages):
        if name == "train" and not (sp.arch or cfg.model.arch):
            raise UserError(f"{where(('stages', i))}: train needs an architecture (model.arch, or arch in the stage)")
    outputs = stage_outputs(cfg)
    taken = {p.resolve(): "the config itself"}
    if cfg.model.checkpoint:
        taken[Path(cfg.model.checkpoint).resolve()] = "the input checkpoint"
    for i, ((name, sp), out) in enumerate(zip(cfg.stages, outputs)):
        for what, path in (("output", out), ("plot", getattr(sp, "plot", None))):
            if path is None:
                continue
            resolved = Path(path).resolve()
            if resolved in taken:
                raise UserError(f"{where(('stages', i, name))}: stage {i} ({name}) {what} {path} would overwrite {taken[resolved]}; give it another path")
            taken[resolved] = f"the {what} of stage {i} ({name})"


def stage_outputs(cfg: RunConfig) -> list[Path]:
    """Where each stage writes: its own `output` if it names one, else `<output_dir>/<NN>-<stage><ext>`."""
    from .stages import STAGES

    out_dir = Path(cfg.output_dir)
    paths = []
    for i, (name, params) in enumerate(cfg.stages):
        explicit = getattr(params, "output", None)
        paths.append(Path(explicit) if explicit else out_dir / f"{i:02d}-{name}{STAGES.get(name).ext}")
    return paths


SHIPPED = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs installed with the package (`dnncompress run NAME` finds them)."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """`path` if it exists, else the shipped config of that name (with or without .yaml)."""
    p = Path(path)
    if p.exists() or len(p.parts) != 1:
        return p
    shipped = SHIPPED / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if shipped.is_file():
        return shipped
    if not p.suffix:
        raise UserError(f"config '{p}' not found: no such file and no shipped config of that name "
                        f"(shipped: {', '.join(shipped_configs())}; see dnncompress list)")
    return p


def load_config(path: str | Path, overrides: list[str] | None = None, trust: bool = False) -> RunConfig:
    """Read, override and validate a run config; every error is a one-line UserError naming the file.
    A bare name (`seed000_fourval`) that is not a file finds the config shipped with the package.

    `trust` allows a `package.module:factory` architecture (it imports and runs that code)."""
    p = find_config(path)
    try:
        return _load_config(p, overrides or [], trust)
    except UserError as e:
        msg = str(e)
        raise UserError(msg if str(p) in msg else f"{p}: {msg}") from None


def _load_config(p: Path, overrides: list[str], trust: bool) -> RunConfig:
    from .stages import STAGES  # stage parameter classes are registered there

    if not p.is_file():
        raise UserError(f"config '{p}' not found; check the path")
    node, raw = _parse_yaml(p)
    raw = raw or {}
    if not isinstance(raw, dict):
        raise UserError(f"{p}: a config must be a mapping with model, data and stages")
    raw = apply_overrides(raw, overrides)
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
    _check_run(cfg, p, where, trust)
    return cfg
