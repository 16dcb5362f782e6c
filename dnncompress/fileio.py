"""Atomic writes and output-path rules shared by every stage: never a half-written file,
never the input overwritten."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on failure it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def output_path(input_path: str | os.PathLike | None, output: str | os.PathLike | None, suffix: str, ext: str = ".pt") -> Path:
    """`output` if given, else `<input stem>.<suffix><ext>` beside the input; refuses to overwrite the input."""
    if output is None:
        if input_path is None:
            raise UserError("no output path: pass -o/--output")
        src = Path(input_path)
        stem = src.name[: -len(src.suffix)] if src.suffix else src.name
        out = src.with_name(f"{stem}.{suffix}{ext}")
    else:
        out = Path(output)
    if input_path is not None and out.exists() and Path(input_path).exists() and out.resolve() == Path(input_path).resolve():
        raise UserError(f"output {out} is the input file; choose another -o (a stage never overwrites its input)")
    if out.is_dir():
        raise UserError(f"output {out} is a directory; give a file name")
    return out


def require_file(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} '{p}' not found; check the path")
    if not p.is_file():
        raise UserError(f"{what} '{p}' is not a file")
    return p
