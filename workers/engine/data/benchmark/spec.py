"""What a benchmark run evaluates (``BenchmarkSpec``) and its output folder (``RunFolder``).

The spec is plain data: the command writes it to ``OUT/run.json`` and into the database, a distributed
shard reads it back, and ``--resume`` refuses to continue a folder whose spec differs (the fields that
change the numbers: dataset, split, split_by, pipelines, configs, limit, gt_union, text_field; and the
schedule, which changes the cost columns).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.engine.data.benchmark.results import ResultsFile
from workers.engine.data.refer import ReferDataset

__all__ = ["BenchmarkSpec", "RunFolder", "RunFolderError"]

_IDENTITY = (
    "dataset",
    "split",
    "split_by",
    "pipelines",
    "configs",
    "limit",
    "gt_union",
    "text_field",
    "schedule",
)


class RunFolderError(ValueError):
    """An output folder that holds another run, or none to resume."""


@dataclass(frozen=True)
class BenchmarkSpec:
    dataset: str
    split: str
    split_by: str
    pipelines: tuple[str, ...]
    data_root: str
    image_dir: str | None = None
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    limit: int | None = None
    gt_union: bool = False
    skip_missing: bool = False
    text_field: str = "sent"
    #: ``per-image`` (ours) or ``per-ref`` (the peers' schedule, for cost measurements only).
    schedule: str = "per-image"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pipelines"] = list(self.pipelines)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchmarkSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["pipelines"] = tuple(known.get("pipelines", ()))
        return cls(**known)

    def open_dataset(self) -> ReferDataset:
        return ReferDataset(
            self.data_root,
            self.dataset,
            self.split,
            split_by=self.split_by,
            image_dir=self.image_dir,
            text_field=self.text_field,
            gt_union=self.gt_union,
        )

    def differences(self, other: BenchmarkSpec) -> list[str]:
        """Names of the fields that change the numbers and differ between the two specs."""
        mine, theirs = self.to_json(), other.to_json()
        return [k for k in _IDENTITY if mine[k] != theirs[k]]


class RunFolder:
    """``OUT/run.json`` (spec plus bookkeeping such as the database run id) and ``OUT/results.jsonl``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.meta_path = self.path / "run.json"
        self.results = ResultsFile(self.path / "results.jsonl")

    def read_meta(self) -> dict[str, Any] | None:
        if not self.meta_path.is_file():
            return None
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunFolderError(f"{self.meta_path} is not valid JSON: {exc}") from exc

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        tmp.replace(self.meta_path)

    def start(self, spec: BenchmarkSpec, *, resume: bool, distributed: bool) -> dict[str, Any]:
        """Check the folder against ``spec`` and return its meta (new, or the one being resumed).

        Raises:
            RunFolderError: without ``resume``, the folder already holds results; with ``resume``, it holds a
                run with another spec or mode (the message names the fields that differ).
        """
        meta = self.read_meta()
        if not resume:
            if meta is not None or self.results.exists():
                raise RunFolderError(
                    f"{self.path} already holds a benchmark run; pass --resume to continue it or choose another --out"
                )
            meta = {"spec": spec.to_json(), "distributed": distributed, "db_run_id": None}
            self.write_meta(meta)
            return meta
        if meta is None:
            meta = {"spec": spec.to_json(), "distributed": distributed, "db_run_id": None}
            self.write_meta(meta)
            return meta
        previous = BenchmarkSpec.from_json(meta["spec"])
        differ = spec.differences(previous)
        if differ:
            raise RunFolderError(
                f"cannot resume {self.path}: its run differs in {', '.join(differ)} "
                f"(was {', '.join(f'{k}={previous.to_json()[k]!r}' for k in differ)})"
            )
        if bool(meta.get("distributed")) != distributed:
            mode = "with" if meta.get("distributed") else "without"
            raise RunFolderError(
                f"cannot resume {self.path}: it was started {mode} --distributed; resume it the same way"
            )
        meta["spec"] = spec.to_json()  # paths (data root, image dir) and skip_missing may change on resume
        self.write_meta(meta)
        return meta
