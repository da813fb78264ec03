"""Reads wandb offline runs (``<run dir>/wandb/offline-run-*``) with no network and no wandb service.

wandb 0.31 writes a run as one ``run-<id>.wandb`` file: a 7-byte header (``:W&B``, a 2-byte magic, a version
byte), then records in the LevelDB log layout (32 KiB blocks; each chunk has a 7-byte header: CRC32C, a
little-endian length and a type FULL / FIRST / MIDDLE / LAST; a block tail shorter than a header is padding)
whose payloads are ``wandb_internal_pb2.Record`` protobufs. The 0.31 Python SDK ships no reader for it (its Go
core syncs the file), hence this one, for what ``compare`` needs: id, group, name, config, history rows,
summary and exit code. CRCs are not checked; a chunk cut short by a killed writer ends the read there.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_DIR_GLOB = "offline-run-*"
RUN_FILE_GLOB = "run-*.wandb"
_FILE_HEADER = 7
_CHUNK_HEADER = 7
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class WandbFileError(RuntimeError):
    """A file that is not a readable wandb run file."""


@dataclass
class OfflineRun:
    """What one offline run recorded; ``history`` holds one dict per ``log`` call (``_step``, ``epoch``, ...)."""

    path: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        """True when the run wrote its exit record (``wandb.finish()`` ran)."""
        return self.exit_code is not None


def iter_records(path: str | Path) -> list[bytes]:
    """Protobuf payloads of a ``.wandb`` file, chunks joined into records."""
    data = Path(path).read_bytes()
    if len(data) < _FILE_HEADER or not data.startswith(b":W&B"):
        raise WandbFileError(f"{path}: not a wandb run file (no ':W&B' header)")
    records: list[bytes] = []
    pending: bytearray | None = None
    pos = _FILE_HEADER
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        pos += _CHUNK_HEADER
        if kind == 0 and length == 0:  # preallocated / padding
            continue
        if pos + length > len(data):  # truncated by a killed writer
            break
        chunk = data[pos:pos + length]
        pos += length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            pending = bytearray(chunk)
        elif kind in (_MIDDLE, _LAST) and pending is not None:
            pending += chunk
            if kind == _LAST:
                records.append(bytes(pending))
                pending = None
    return records


def _item_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _item_value(item: Any) -> Any:
    if item.value_json:
        return json.loads(item.value_json)
    kind = item.WhichOneof("value") if hasattr(item, "WhichOneof") else None
    if kind in (None, "none"):
        return None
    value = getattr(item, kind)
    return json.loads(value) if kind == "json" else value


def _set_nested(target: dict[str, Any], item: Any, value: Any) -> None:
    keys = [item.key] if item.key else list(item.nested_key)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _apply_config(config: dict[str, Any], record: Any) -> None:
    for item in record.update:
        _set_nested(config, item, _item_value(item))
    for item in record.remove:
        config.pop(_item_key(item), None)


def read_offline_run(path: str | Path) -> OfflineRun:
    """An offline run from its directory (``offline-run-*``) or its ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    files = sorted(path.glob(RUN_FILE_GLOB)) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise WandbFileError(f"{path}: no {RUN_FILE_GLOB} file (is it a wandb offline run directory?)")
    run = OfflineRun(path=path)
    for payload in iter_records(files[0]):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception as err:  # protobuf's DecodeError: a damaged record ends what can be trusted
            raise WandbFileError(f"{files[0]}: damaged record ({err})") from err
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.group = r.run_id, r.project, r.run_group
            run.name = r.display_name or run.name
            _apply_config(run.config, r.config)
        elif kind == "config":
            _apply_config(run.config, record.config)
        elif kind == "history":
            run.history.append({_item_key(i): _item_value(i) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_item_key(item)] = _item_value(item)
            for item in record.summary.remove:
                run.summary.pop(_item_key(item), None)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def find_offline_runs(run_dir: str | Path) -> list[Path]:
    """Offline-run directories of a project run directory (``<run>/wandb/offline-run-*``), oldest first.

    A resumed run leaves one directory per process with the same id; their names start with the start time.
    """
    return sorted(p for p in (Path(run_dir) / "wandb").glob(RUN_DIR_GLOB) if p.is_dir())


def is_offline_run_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and any(Path(path).glob(RUN_FILE_GLOB))
