"""The on-disk format of recorded episodes: memory-mapped numpy shards plus one JSON index.

A dataset is one directory per task::

    index.json                 what, how, and which episodes: the only file that says what is complete
    shard-00000/
        obs.<key>.npy          (N, ...) one row per timestep, one file per observation key
        actions.npy            (N,) int64 or (N, k) float32
        rewards.npy            (N,) float32, the reward the row's action earned
        executed.npy           like actions.npy, only where a learner drove (DAgger): the action the env ran
        episode_offsets.npy    (E + 1,) int64, episode e is rows offsets[e] .. offsets[e+1]-1
    shard-00001/ ...

Design choices:
- Shards of whole episodes, plain ``.npy`` files: any window of any episode is a slice of a
  ``np.load(mmap_mode="r")`` array, read without loading the dataset (`EpisodeDataset.window`). One file per
  episode would cost an open file descriptor per mapped episode (Python's mmap keeps one); shards bound that.
- Atomic writes. A shard is written into a hidden temporary directory and moved into place with one
  ``os.replace``; only then is it listed in the index, which is itself written to a temporary file and moved
  with ``os.replace``. A process killed at any point leaves either the old index or the new one; shards it
  does not list are leftovers and are deleted on the next write. Files are fsynced before they are moved.
- The index lists every episode (seed, return, length, whether it terminated, shard and row) and the number
  of seeds played, kept or filtered out, so that a rerun resumes at the next seed: nothing lost, nothing
  played twice. ``complete`` becomes true only when the target number of episodes is written.
- Reading checks every file against the index before mapping it: a damaged or foreign directory, a
  truncated array, or an index that does not match its shards is a `DatasetError` naming the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from generalist.tokenizers.stream import ActionSpec

FORMAT = "generalist-episodes"
VERSION = 1
INDEX = "index.json"
SHARD_PATTERN = re.compile(r"shard-\d{5}")
TMP_PREFIX = ".tmp-"
OFFSETS = "episode_offsets.npy"
ACTIONS = "actions.npy"
REWARDS = "rewards.npy"
EXECUTED = "executed.npy"


class DatasetError(ValueError):
    """A dataset directory that cannot be read or resumed; the message names the file and the problem."""


@dataclass(frozen=True)
class ArraySpec:
    """dtype and per-row shape of one per-timestep array."""

    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: np.ndarray) -> ArraySpec:
        """The spec of a stacked (T, ...) array."""
        return cls(array.dtype.str, tuple(array.shape[1:]))

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ArraySpec:
        """Inverse of `to_json`."""
        return cls(str(data["dtype"]), tuple(int(n) for n in data["shape"]))


def observation_file(key: str) -> str:
    """The file name of an observation key inside a shard."""
    return f"obs.{key}.npy"


# ---------------------------------------------------------------------------------------------------- index


def read_index(directory: Path) -> dict[str, Any]:
    """The parsed index of a dataset directory; anything that is not our index is a DatasetError."""
    path = directory / INDEX
    if not path.is_file():
        raise DatasetError(f"{path}: missing; {directory} is not a recorded dataset (run `generalist collect`)")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: damaged, not valid JSON ({error})") from error
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a {FORMAT} index (foreign file: no \"format\": \"{FORMAT}\")")
    if index.get("version") != VERSION:
        raise DatasetError(f"{path}: format version {index.get('version')!r}; this code reads {VERSION}")
    required = ("task", "action_kind", "action_size", "observations", "action", "complete", "seeds_played")
    required += ("shards", "episodes")
    missing = [key for key in required if key not in index]
    if missing:
        raise DatasetError(f"{path}: damaged, missing fields {missing}")
    return index


def write_index(directory: Path, index: Mapping[str, Any]) -> None:
    """Replace the index atomically: temporary file, fsync, os.replace."""
    tmp = directory / f"{TMP_PREFIX}{INDEX}-{os.getpid()}"
    with open(tmp, "w") as file:
        json.dump(index, file, indent=1)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, directory / INDEX)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # Makes the renames themselves durable; harmless where directories cannot be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------- shards


def write_shard(directory: Path, name: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write the files of one shard into a temporary directory, then move it into place atomically."""
    tmp = directory / f"{TMP_PREFIX}{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for file_name, array in arrays.items():
        with open(tmp / file_name, "wb") as file:
            np.save(file, np.ascontiguousarray(array), allow_pickle=False)
            file.flush()
            os.fsync(file.fileno())
    target = directory / name
    if target.exists():  # an unlisted shard of a failed attempt: the index never pointed at it
        shutil.rmtree(target)
    os.replace(tmp, target)
    _fsync_directory(directory)


def remove_leftovers(directory: Path, index: Mapping[str, Any]) -> list[str]:
    """Delete what a killed run left behind (temporary files, unlisted shards); refuse foreign files."""
    listed = {shard["name"] for shard in index["shards"]}
    removed, foreign = [], []
    for entry in sorted(directory.iterdir()):
        if entry.name == INDEX or entry.name in listed:
            continue
        if entry.name.startswith(TMP_PREFIX) or (SHARD_PATTERN.fullmatch(entry.name) and entry.is_dir()):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry.name)
        else:
            foreign.append(entry.name)
    if foreign:
        raise DatasetError(f"{directory}: foreign files in a dataset directory: {foreign}; move them away")
    return removed


def array_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a .npy file, read from its header only."""
    try:
        with open(path, "rb") as file:
            major, _ = np.lib.format.read_magic(file)
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
            offset = file.tell()
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing") from None
    except (ValueError, OSError, SyntaxError) as error:
        raise DatasetError(f"{path}: damaged, not a .npy array ({error})") from error
    if fortran:
        raise DatasetError(f"{path}: damaged, Fortran-ordered array")
    return tuple(shape), dtype, offset


def check_array(path: Path, rows: int, spec: ArraySpec) -> None:
    """Check from its header and size that a .npy file holds `rows` whole rows of `spec`."""
    shape, dtype, offset = array_header(path)
    expected_shape = (rows, *spec.shape)
    if shape != expected_shape or dtype != np.dtype(spec.dtype):
        raise DatasetError(
            f"{path}: holds {dtype} {shape}, the index says {np.dtype(spec.dtype)} {expected_shape}"
        )
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size != needed:
        raise DatasetError(f"{path}: truncated or damaged, {size} bytes where its header needs {needed}")


def open_array(path: Path, rows: int, spec: ArraySpec) -> np.ndarray:
    """Memory-map a per-timestep array after `check_array`."""
    check_array(path, rows, spec)
    if rows == 0:  # mmap cannot map zero bytes
        return np.zeros((0, *spec.shape), np.dtype(spec.dtype))
    return np.load(path, mmap_mode="r", allow_pickle=False)


@dataclass
class Shard:
    """The memory-mapped arrays of one shard."""

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    offsets: np.ndarray


# --------------------------------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class EpisodeInfo:
    """What the index says about one episode."""

    seed: int
    episode_return: float
    length: int
    terminated: bool
    shard: int
    offset: int


class EpisodeDataset:
    """Random access to any window of any recorded episode, memory-mapped, never loaded whole.

    Shards are mapped on first use and at most `max_open_shards` stay mapped (least recently used first out),
    which bounds open file descriptors however large the dataset.
    """

    def __init__(self, directory: str | Path, allow_incomplete: bool = False, max_open_shards: int = 64) -> None:
        self.directory = Path(directory)
        self.index = read_index(self.directory)
        if not self.index["complete"] and not allow_incomplete:
            raise DatasetError(
                f"{self.directory / INDEX}: incomplete ({len(self.index['episodes'])} of "
                f"{self.index.get('target_episodes')} episodes); rerun `generalist collect` to resume it"
            )
        try:
            self.observation_specs = {
                key: ArraySpec.from_json(spec) for key, spec in self.index["observations"].items()
            }
            self.action_array = ArraySpec.from_json(self.index["action"]) if self.index["episodes"] else None
            self.episodes = [_episode_info(e) for e in self.index["episodes"]]
            self._check_layout()
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, DatasetError):
                raise
            raise DatasetError(f"{self.directory / INDEX}: damaged, unreadable entry ({error!r})") from error
        self._max_open = max_open_shards
        self._open: OrderedDict[int, Shard] = OrderedDict()

    @property
    def task(self) -> str:
        """The task these episodes were recorded in."""
        return str(self.index["task"])

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[EpisodeInfo]:
        return iter(self.episodes)

    @property
    def num_steps(self) -> int:
        """Timesteps over all episodes."""
        return sum(e.length for e in self.episodes)

    @property
    def action_spec(self) -> ActionSpec:
        """How this task's actions become tokens (what `generalist.datasets.mixture` reads)."""

        if self.index["action_kind"] == "discrete":
            return ActionSpec("discrete", 1, int(self.index["action_size"]))
        return ActionSpec("continuous", int(self.index["action_size"]))

    def episode_length(self, episode: int) -> int:
        """Timesteps of one episode."""
        return self.episodes[episode].length

    def action_counts(self) -> np.ndarray:
        """How often each action was recorded, over every episode: int64 (action_size,); discrete actions only."""
        spec = self.action_spec
        if spec.kind != "discrete":
            raise DatasetError(f"{self.directory}: action counts need discrete actions, these are {spec.kind}")
        counts = np.zeros(spec.n, np.int64)
        for episode in range(len(self.episodes)):
            counts += np.bincount(self.actions(episode).reshape(-1), minlength=spec.n)[: spec.n]
        return counts

    def read(self, episode: int, start: int, stop: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Observations by key and actions of rows [start, stop) of one episode (the mixture's protocol)."""
        window = self.window(episode, start, stop)
        return window["observations"], window["actions"]

    def window(self, episode: int, start: int = 0, stop: int | None = None) -> dict[str, Any]:
        """Rows [start, stop) of one episode: {"observations": {key: (n, ...)}, "actions", "rewards"}."""
        info = self.episodes[episode]
        rows = self._rows(episode, start, stop)
        shard = self._shard(info.shard)
        # np.array copies the mapped rows, so the window outlives the mapping.
        return {
            "observations": {key: np.array(array[rows]) for key, array in shard.observations.items()},
            "actions": np.array(shard.actions[rows]),
            "rewards": np.array(shard.rewards[rows]),
        }

    def actions(self, episode: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The recorded actions of rows [start, stop) of one episode (a learner-driven recording's expert labels),
        without reading its observations."""
        info = self.episodes[episode]
        return np.array(self._shard(info.shard).actions[self._rows(episode, start, stop)])

    def executed_actions(self, episode: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The actions the env ran in rows [start, stop) of one episode: those stored beside the labels where a
        learner drove (`EXECUTED`), else the recorded actions themselves."""
        info = self.episodes[episode]
        rows = self._rows(episode, start, stop)
        entry = self.index["shards"][info.shard]
        path = self.directory / entry["name"] / EXECUTED
        if not path.exists():
            return self.actions(episode, start, stop)
        return np.array(open_array(path, int(entry["steps"]), self.action_array)[rows])

    def _rows(self, episode: int, start: int, stop: int | None) -> slice:
        """The shard rows of steps [start, stop) of one episode (stop None: its end); outside it, an IndexError."""
        info = self.episodes[episode]
        stop = info.length if stop is None else stop
        if not 0 <= start <= stop <= info.length:
            raise IndexError(f"window [{start}, {stop}) outside episode {episode} of length {info.length}")
        return slice(info.offset + start, info.offset + stop)

    def _shard(self, number: int) -> Shard:
        if number in self._open:
            self._open.move_to_end(number)
            return self._open[number]
        entry = self.index["shards"][number]
        path = self.directory / entry["name"]
        rows = int(entry["steps"])
        offsets = open_array(path / OFFSETS, int(entry["episodes"]) + 1, ArraySpec("<i8", ()))
        expected = [e.offset for e in self.episodes if e.shard == number]
        ends = [e.offset + e.length for e in self.episodes if e.shard == number]
        if list(offsets[:-1]) != expected or int(offsets[-1]) != (ends[-1] if ends else 0):
            raise DatasetError(f"{path / OFFSETS}: episode boundaries do not match {self.directory / INDEX}")
        shard = Shard(
            observations={
                key: open_array(path / observation_file(key), rows, spec)
                for key, spec in self.observation_specs.items()
            },
            actions=open_array(path / ACTIONS, rows, self.action_array),
            rewards=open_array(path / REWARDS, rows, ArraySpec("<f4", ())),
            offsets=offsets,
        )
        self._open[number] = shard
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return shard

    def _check_layout(self) -> None:
        """Check the index against itself and every shard's files, reading headers only."""
        index_path = self.directory / INDEX
        steps = [0] * len(self.index["shards"])
        counts = [0] * len(self.index["shards"])
        for number, info in enumerate(self.episodes):
            if not 0 <= info.shard < len(steps) or info.offset != steps[info.shard]:
                raise DatasetError(f"{index_path}: damaged, episode {number} has shard/offset out of sequence")
            steps[info.shard] += info.length
            counts[info.shard] += 1
        for number, entry in enumerate(self.index["shards"]):
            if not SHARD_PATTERN.fullmatch(str(entry["name"])):  # a name like ../x would read outside the dataset
                raise DatasetError(f"{index_path}: damaged, shard name {entry['name']!r} is not shard-NNNNN")
            path = self.directory / entry["name"]
            if not path.is_dir():
                raise DatasetError(f"{path}: missing, listed in {index_path}")
            if (int(entry["steps"]), int(entry["episodes"])) != (steps[number], counts[number]):
                raise DatasetError(f"{index_path}: damaged, shard {entry['name']} totals disagree with episodes")
            files = [observation_file(key) for key in self.observation_specs] + [ACTIONS, REWARDS]
            specs = [*self.observation_specs.values(), self.action_array, ArraySpec("<f4", ())]
            for file_name, spec in zip(files, specs, strict=True):
                check_array(path / file_name, steps[number], spec)
            check_array(path / OFFSETS, counts[number] + 1, ArraySpec("<i8", ()))


def _episode_info(entry: Mapping[str, Any]) -> EpisodeInfo:
    return EpisodeInfo(
        seed=int(entry["seed"]),
        episode_return=float(entry["return"]),
        length=int(entry["length"]),
        terminated=bool(entry["terminated"]),
        shard=int(entry["shard"]),
        offset=int(entry["offset"]),
    )
