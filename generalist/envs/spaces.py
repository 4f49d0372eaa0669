"""Any Gymnasium space onto the observation contract and the agent's actions: how a user's env or dataset is read.

The observation contract (`generalist.envs.contract`) has four keys. A space maps onto it part by part:

- a Box of uint8 of shape (H, W, 3), (H, W, 1) or (H, W): ``image``, RGB (gray repeated), padded with black at the
  bottom and right to multiples of 16;
- any other Box: ``continuous``, its values flattened, as float32;
- Discrete, MultiDiscrete, MultiBinary: ``discrete``, its values minus the space's start, flattened (each < 1024);
- Text: ``text``;
- Dict: its keys in sorted order, each mapped as above; Tuple likewise, in order.

Continuous parts of a Dict are concatenated in key order into one ``continuous`` vector, discrete parts into one
``discrete`` vector; a space with two images or two texts, or any other space (Graph, Sequence, OneOf), cannot be
tokenized, and `UnsupportedSpace` says which part and why.

Actions: Discrete(n) (n <= 1024) is one discrete slot, a 1-D Box with finite bounds one continuous slot per
dimension, rescaled to [-1, 1] (Gymnasium's ``RescaleAction`` does it in the env; `ActionMapping.to_agent` does it
to recorded actions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from generalist.envs.contract import DISCRETE_VALUES, PATCH_SIZE, Observation

FieldKind = Literal["continuous", "discrete", "image", "text"]
KeyPath = tuple[str | int, ...]


class UnsupportedSpace(ValueError):
    """A space (or part of one) that cannot be tokenized; the message names the part and why."""


def _name(path: KeyPath) -> str:
    return "observation" + "".join(f"[{key!r}]" for key in path)


@dataclass(frozen=True)
class Field:
    """One leaf of an observation space and where it goes in the contract."""

    path: KeyPath  # keys (Dict) and indices (Tuple) from the top of the space to this leaf
    kind: FieldKind
    space: spaces.Space
    size: int  # values it adds to `continuous` or `discrete`; 0 for an image or text
    start: np.ndarray | None = None  # discrete: each value's lowest value, subtracted

    def describe(self) -> str:
        """One line: the leaf, its space, and what it becomes."""
        return f"{_name(self.path)}: {self.space} -> {self.kind}" + (f" ({self.size} values)" if self.size else "")


def _is_image(space: spaces.Box) -> bool:
    shape = space.shape
    return space.dtype == np.uint8 and (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3)))


def _discrete_start(space: spaces.Space) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        return np.array([space.start], np.int64)
    if isinstance(space, spaces.MultiDiscrete):
        return np.asarray(space.start, np.int64).reshape(-1)
    return np.zeros(int(np.prod(space.shape)), np.int64)  # MultiBinary


def _discrete_sizes(space: spaces.Space) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        return np.array([space.n], np.int64)
    if isinstance(space, spaces.MultiDiscrete):
        return np.asarray(space.nvec, np.int64).reshape(-1)
    return np.full(int(np.prod(space.shape)), 2, np.int64)  # MultiBinary


def _fields(space: spaces.Space, path: KeyPath) -> list[Field]:
    if isinstance(space, spaces.Dict):
        return [f for key in sorted(space.spaces) for f in _fields(space.spaces[key], (*path, key))]
    if isinstance(space, spaces.Tuple):
        return [f for i, part in enumerate(space.spaces) for f in _fields(part, (*path, i))]
    if isinstance(space, spaces.Box):
        if _is_image(space):
            return [Field(path, "image", space, 0)]
        return [Field(path, "continuous", space, int(np.prod(space.shape)))]
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        sizes = _discrete_sizes(space)
        if sizes.max(initial=0) > DISCRETE_VALUES:
            raise UnsupportedSpace(f"{_name(path)}: {space} takes up to {sizes.max()} values; discrete tokens hold "
                                   f"{DISCRETE_VALUES} (0..{DISCRETE_VALUES - 1})")
        return [Field(path, "discrete", space, len(sizes), _discrete_start(space))]
    if isinstance(space, spaces.Text):
        return [Field(path, "text", space, 0)]
    raise UnsupportedSpace(f"{_name(path)}: {type(space).__name__} spaces cannot be tokenized (supported: Box, "
                           "Discrete, MultiDiscrete, MultiBinary, Text, and Dict or Tuple of them)")


def _leaf(observation: Any, path: KeyPath) -> Any:
    for key in path:
        observation = observation[key]
    return observation


def _image_shape(space: spaces.Box) -> tuple[int, int]:
    height, width = space.shape[:2]
    return -(-height // PATCH_SIZE) * PATCH_SIZE, -(-width // PATCH_SIZE) * PATCH_SIZE


@dataclass(frozen=True)
class ObservationMapping:
    """How one observation space becomes the contract's dict (`observation_mapping` builds it)."""

    space: spaces.Space
    fields: tuple[Field, ...]

    def contract_space(self) -> spaces.Dict:
        """The contract's Dict space this mapping produces."""
        parts: dict[str, spaces.Space] = {}
        n_continuous = sum(f.size for f in self.fields if f.kind == "continuous")
        n_discrete = sum(f.size for f in self.fields if f.kind == "discrete")
        for f in self.fields:
            if f.kind == "image":
                parts["image"] = spaces.Box(0, 255, (*_image_shape(f.space), 3), np.uint8)
            elif f.kind == "text":
                parts["text"] = f.space
        if n_continuous:
            parts["continuous"] = spaces.Box(-np.inf, np.inf, (n_continuous,), np.float32)
        if n_discrete:
            sizes = np.concatenate([_discrete_sizes(f.space) for f in self.fields if f.kind == "discrete"])
            parts["discrete"] = spaces.MultiDiscrete(sizes, dtype=np.int64)
        return spaces.Dict(parts)

    def convert(self, observations: Any, steps: int) -> Observation:
        """`steps` observations stacked along a first axis (as a dataset stores them) to the contract's arrays
        stacked the same way: image (steps, H, W, 3) uint8, continuous (steps, n) float32, discrete (steps, n)
        int64, text an array of `steps` strings."""
        out: dict[str, Any] = {}
        continuous, discrete = [], []
        for f in self.fields:
            value = _leaf(observations, f.path)
            if f.kind == "text":
                out["text"] = np.asarray(value, dtype=str).reshape(steps)
                continue
            array = np.asarray(value)
            if array.shape[:1] != (steps,) and not (steps == 1 and array.shape == f.space.shape):
                raise ValueError(f"{_name(f.path)}: {array.shape[0] if array.ndim else 'no'} rows for {steps} steps")
            array = array.reshape(steps, *f.space.shape)
            if f.kind == "continuous":
                continuous.append(array.reshape(steps, -1).astype(np.float32))
            elif f.kind == "discrete":
                discrete.append(array.reshape(steps, -1).astype(np.int64) - f.start)
            else:
                out["image"] = _to_contract_image(array)
        if continuous:
            out["continuous"] = np.concatenate(continuous, axis=1)
        if discrete:
            out["discrete"] = np.concatenate(discrete, axis=1)
        return out

    def convert_one(self, observation: Any) -> Observation:
        """One observation of the space to the contract's dict."""
        converted = self.convert(_add_axis(observation), 1)
        return {key: (str(value[0]) if key == "text" else value[0]) for key, value in converted.items()}

    def describe(self) -> str:
        """One line per leaf of the space: what it becomes."""
        return "\n".join(f.describe() for f in self.fields)


def _add_axis(observation: Any) -> Any:
    if isinstance(observation, Mapping):
        return {key: _add_axis(value) for key, value in observation.items()}
    if isinstance(observation, tuple):
        return tuple(_add_axis(value) for value in observation)
    if isinstance(observation, str):
        return [observation]
    return np.asarray(observation)[None]


def _to_contract_image(images: np.ndarray) -> np.ndarray:
    """(steps, H, W[, 1 or 3]) uint8 to (steps, H', W', 3), padded with black to multiples of the patch size."""
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    height, width = images.shape[1:3]
    pad_h, pad_w = -height % PATCH_SIZE, -width % PATCH_SIZE
    if pad_h or pad_w:
        images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return np.ascontiguousarray(images, dtype=np.uint8)


def observation_mapping(space: spaces.Space) -> ObservationMapping:
    """The mapping of `space` onto the contract; `UnsupportedSpace` names a part that has none."""
    fields = tuple(_fields(space, ()))
    for kind in ("image", "text"):
        several = [_name(f.path) for f in fields if f.kind == kind]
        if len(several) > 1:
            raise UnsupportedSpace(f"{', '.join(several)}: a timestep holds one {kind}, the space has {len(several)}")
    if not fields:
        raise UnsupportedSpace(f"{space}: no part to tokenize")
    return ObservationMapping(space, fields)


@dataclass(frozen=True)
class ActionMapping:
    """How one action space becomes the agent's actions (`action_mapping` builds it)."""

    space: spaces.Space
    kind: Literal["discrete", "continuous"]
    size: int  # number of actions (discrete) or dimensions (continuous)

    def to_agent(self, actions: np.ndarray) -> np.ndarray:
        """Recorded env actions (steps, ...) to the agent's: (steps,) int64 from 0, or (steps, n) in [-1, 1]."""
        array = np.asarray(actions)
        if self.kind == "discrete":
            return array.astype(np.int64).reshape(len(array)) - self.space.start
        low, high = self.space.low.astype(np.float64), self.space.high.astype(np.float64)
        values = array.reshape(len(array), -1).astype(np.float64)
        if np.all(low == -1) and np.all(high == 1):
            return values.astype(np.float32)
        # The inverse of Gymnasium's RescaleAction, which the env applies to what the agent emits.
        return (2.0 * (values - low) / (high - low) - 1.0).astype(np.float32)


def action_mapping(space: spaces.Space) -> ActionMapping:
    """The mapping of an action space onto the agent's; `UnsupportedSpace` says why there is none."""
    if isinstance(space, spaces.Discrete):
        if space.n > DISCRETE_VALUES:
            raise UnsupportedSpace(f"action {space}: at most {DISCRETE_VALUES} discrete actions")
        return ActionMapping(space, "discrete", int(space.n))
    if isinstance(space, spaces.Box):
        if len(space.shape) != 1:
            raise UnsupportedSpace(f"action {space}: a Box action must be 1-D, this one has shape {space.shape}")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise UnsupportedSpace(f"action {space}: a Box action needs finite bounds to be rescaled to [-1, 1]")
        return ActionMapping(space, "continuous", int(space.shape[0]))
    raise UnsupportedSpace(f"action {space}: {type(space).__name__} actions cannot be tokenized (supported: Discrete, "
                           "1-D Box with finite bounds)")


class ContractObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Any env whose spaces `ObservationMapping` maps, as a contract env: dict observations, actions from 0.

    `expected` is the observation space the mapping was made for (a dataset's): an env whose space differs is
    refused, naming both.
    """

    def __init__(self, env: gym.Env, expected: spaces.Space | None = None, name: str = "the dataset") -> None:
        gym.utils.RecordConstructorArgs.__init__(self, expected=expected, name=name)
        gym.Wrapper.__init__(self, env)
        if expected is not None and env.observation_space != expected:
            raise ValueError(f"{env.spec.id if env.spec else env}: observation space {env.observation_space} "
                             f"differs from {name}'s {expected}")
        self.mapping = observation_mapping(env.observation_space)
        self.actions = action_mapping(env.action_space)
        self.observation_space = self.mapping.contract_space()
        if self.actions.kind == "discrete":
            self.action_space = spaces.Discrete(self.actions.size)

    def reset(self, **kwargs: Any) -> tuple[Observation, dict[str, Any]]:
        """Reset and map the first observation."""
        observation, info = self.env.reset(**kwargs)
        return self.mapping.convert_one(observation), info

    def step(self, action: Any) -> tuple[Observation, Any, bool, bool, dict[str, Any]]:
        """Shift a discrete action back to the env's start, step, and map the observation."""
        if self.actions.kind == "discrete":
            action = int(action) + int(self.env.action_space.start)
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self.mapping.convert_one(observation), reward, terminated, truncated, info
