"""Scripted experts: the demonstrators the agent imitates and the 100% of the expert-normalized score.

Every expert implements `generalist.envs.policies.Policy`. Control experts read the raw state, which is the
``continuous`` observation itself; the Atari experts read the console RAM from ``info["ram"]``, never the
image. Continuous experts return actions in [-1, 1] like the agent (the env rescales them).

Design choices, and where the numbers come from (docs/FACTS.md, checked again by `generalist baselines`):
- CartPole, MountainCar (both), Acrobot: one-line controllers on the state.
- Pendulum: energy shaping to reach the top, then a PD controller that balances.
- LunarLander (both): Gymnasium's own ``lunar_lander.heuristic``.
- Pong and Breakout: predict where the ball meets the paddle's line (straight flight with reflections off the
  walls), and move the paddle there. The paddle lags its input (it keeps going for a step or two after the
  input stops), so the controllers steer where the paddle is *going*: its position plus the part of the last
  moves it has not covered yet, the lead for the paddle's momentum. That beat a lead proportional to the last
  displacement (about +13 in Pong, about 130 in Breakout with episodes from 19 to 391) and pure ball tracking
  (about -8 in Pong). Constants were measured on frames and tuned on seeds 100-105, outside the seeds of
  `generalist baselines`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from generalist.envs.contract import Observation
from generalist.envs.policies import Action


class _Stateless:
    """Experts without memory or randomness of their own: reset has nothing to do."""

    def reset(self, seed: int | None = None) -> None:
        """Nothing to reset."""


class CartPoleExpert(_Stateless):
    """Push towards the side the pole falls to, with a little position and velocity feedback."""

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """0 pushes left, 1 pushes right."""
        x, x_dot, theta, theta_dot = observation["continuous"]
        return int(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0)


class AcrobotExpert(_Stateless):
    """Torque along the second joint's velocity: pumps energy into the swing."""

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """0 is torque -1, 1 is none, 2 is +1."""
        return 2 if observation["continuous"][5] > 0 else 0


class MountainCarExpert(_Stateless):
    """Push in the direction of motion: each swing climbs higher."""

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """0 pushes left, 2 pushes right."""
        return 2 if observation["continuous"][1] >= 0 else 0


class MountainCarContinuousExpert(_Stateless):
    """Full force in the direction of motion."""

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """Force in [-1, 1]."""
        return np.array([1.0 if observation["continuous"][1] >= 0 else -1.0], dtype=np.float32)


@dataclass
class PendulumExpert(_Stateless):
    """Energy shaping swings the pendulum up; a PD controller balances it near the top.

    Pendulum-v1 dynamics: theta'' = 15 sin(theta) + 3 u (theta = 0 upright, |u| <= 2), so the energy
    E = theta'^2 / 2 + 15 (cos(theta) - 1) is 0 upright at rest and changes as dE/dt = 3 u theta'.
    """

    max_torque: float = 2.0
    balance_cos: float = 0.85  # switch to PD within about 32 degrees of the top...
    balance_energy: float = 4.0  # ...and when not too fast to be caught
    kp: float = 10.0  # theta'' = (15 - 3 kp) theta - 3 kd theta': stable for kp > 5
    kd: float = 2.0

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """Torque scaled to [-1, 1]."""
        cos, sin, theta_dot = (float(v) for v in observation["continuous"])
        theta = math.atan2(sin, cos)
        energy = 0.5 * theta_dot**2 + 15.0 * (cos - 1.0)
        if cos > self.balance_cos and abs(energy) < self.balance_energy:
            torque = -(self.kp * theta + self.kd * theta_dot)
        else:
            # Push along the motion while energy is short of the top, against it when above.
            direction = 1.0 if theta_dot >= 0 else -1.0
            torque = self.max_torque * direction * (1.0 if energy < 0 else -1.0)
        return np.array([np.clip(torque / self.max_torque, -1.0, 1.0)], dtype=np.float32)


class LunarLanderExpert(_Stateless):
    """Gymnasium's built-in heuristic lander (discrete: 4 engines' choices; continuous: two throttles)."""

    def __init__(self, continuous: bool = False) -> None:
        # Imported here: Box2D and pygame take a while to load, and only this expert needs them.
        # Imported here: Box2D loads only for the lunar landers (0.14 s).
        from gymnasium.envs.box2d.lunar_lander import heuristic

        self._heuristic = heuristic
        self.continuous = continuous
        # The heuristic only reads `env.unwrapped.continuous`; a stand-in keeps the expert env-free.
        self._env_stub = SimpleNamespace(unwrapped=SimpleNamespace(continuous=continuous))

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """The heuristic's action; continuous throttles already lie in [-1, 1]."""
        action = self._heuristic(self._env_stub, observation["continuous"])
        if self.continuous:
            return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        return int(action)


def reflect(y: float, low: float, high: float) -> float:
    """Fold a straight-line position back into [low, high] as successive wall bounces would."""
    span = high - low
    phase = (y - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


@dataclass
class PongExpert:
    """Meet the ball where it crosses the paddle's line; return to the centre while it flies away.

    RAM (docs/FACTS.md): player paddle y ``ram[51]``, ball x ``ram[49]``, ball y ``ram[54]``. In RAM units the
    ball's left edge reaches the player's paddle at x = 187; the ball's top stays in 49..202 between the
    walls; the ball is centred on the paddle when ball y = paddle y + 6.5. Actions: 0 NOOP, 2 up, 3 down.

    The paddle is steered through its commanded position: each step of up or down moves where the paddle is
    going by 23 pixels, and the paddle gets there over three steps (10, 10 and 3 pixels; measured without
    sticky actions). So the commanded position is the paddle's position plus 13 pixels per move one step ago
    and 3 per move two steps ago. Moves are 23 pixels, so the controller holds within 11.5 of the target; on
    the last step before the ball arrives it moves when 3 or more off, so that the paddle sweeps across the
    ball's path as it lands (tuned on 6 seeds outside the baseline seeds: +16.5 mean with 3, +16.0 with 4.5,
    +14.7 with 6, -8.5 without the final move; aiming off-centre by 4 pixels either way lost points).
    """

    moved_last: float = 13.0
    moved_before: float = 3.0
    hold: float = 11.5
    final_hold: float = 3.0
    paddle_x: float = 187.0
    ball_top: float = 49.0
    ball_bottom: float = 202.0
    centre: float = 125.0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the last ball position and moves."""
        self._ball: tuple[int, int] | None = None
        self._moves = (0, 0)  # (last step, the step before)
        self._target = self.centre

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """NOOP, up or down towards the predicted meeting point."""
        ram = info["ram"]
        ball_x, ball_y, paddle = int(ram[49]), int(ram[54]), int(ram[51])
        commanded = paddle + self.moved_last * self._moves[0] + self.moved_before * self._moves[1]
        steps_to_paddle = math.inf
        # x == 0 means no ball on screen (between points); keep the last target then.
        if ball_x != 0 and self._ball is not None and self._ball[0] != 0:
            vx, vy = ball_x - self._ball[0], ball_y - self._ball[1]
            if vx > 0 and ball_x <= self.paddle_x:
                steps_to_paddle = (self.paddle_x - ball_x) / vx
                meet = reflect(ball_y + vy * steps_to_paddle, self.ball_top, self.ball_bottom)
                self._target = meet - 6.5
            elif vx < 0:
                self._target = self.centre
        self._ball = (ball_x, ball_y)
        error = self._target - commanded
        hold = self.final_hold if steps_to_paddle <= 1.0 else self.hold
        move = 0 if abs(error) <= hold else (1 if error > 0 else -1)
        self._moves = (move, self._moves[0])
        return {0: 0, 1: 3, -1: 2}[move]


@dataclass
class BreakoutExpert:
    """Fire when no ball is in play; meet the falling ball where it crosses the paddle's line.

    RAM (docs/FACTS.md): paddle x ``ram[72]``, ball x ``ram[99]``, ball y ``ram[101]`` (0: no ball in play). In
    RAM units the ball's bottom reaches the paddle at y = 177; the ball's left edge stays in 57..199
    between the side walls; the ball is centred on the paddle when ball x = paddle x + 8.5 (a hit needs
    them within about 9). While the ball rises (bricks may turn it at any time) the paddle stays under it.
    Actions: 0 NOOP, 1 FIRE, 2 right, 3 left.

    The paddle is steered through its commanded position: each step of RIGHT or LEFT moves where the paddle
    is going by about 22 pixels, and the paddle covers half of that during the step and the rest during the
    next one (measured without sticky actions). So the commanded position is the paddle's position plus half
    a move if the last action was a move. Moves are 22 pixels, so the controller holds within 11 of the
    target; on the last step before the ball arrives it moves when 5 or more off, so that the paddle is
    sweeping across the ball's path as it lands (a tuned choice: 464-501 mean points over 6 seeds for a final
    threshold of 4 to 6, 387 for 7, 78 without the final move).
    """

    half_move: float = 11.0
    hold: float = 11.0
    final_hold: float = 5.0
    paddle_y: float = 177.0
    ball_left: float = 57.0
    ball_right: float = 199.0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Forget the last ball position and move."""
        self._ball: tuple[int, int] | None = None
        self._move = 0
        self._target: float | None = None

    def act(self, observation: Observation, info: Mapping[str, Any]) -> Action:
        """FIRE, or NOOP/right/left towards the predicted meeting point."""
        ram = info["ram"]
        ball_x, ball_y, paddle = int(ram[99]), int(ram[101]), int(ram[72])
        commanded = paddle + self.half_move * self._move
        self._move = 0
        if ball_y == 0:
            self._ball = None
            return 1
        steps_to_paddle = math.inf
        if self._ball is not None:
            vx, vy = ball_x - self._ball[0], ball_y - self._ball[1]
            if vy > 0 and ball_y <= self.paddle_y:
                steps_to_paddle = (self.paddle_y - ball_y) / vy
                meet = reflect(ball_x + vx * steps_to_paddle, self.ball_left, self.ball_right)
                self._target = meet - 8.5
            elif vy < 0:
                self._target = ball_x - 8.5
        self._ball = (ball_x, ball_y)
        if self._target is None:
            return 0
        error = self._target - commanded
        hold = self.final_hold if steps_to_paddle <= 1.0 else self.hold
        if abs(error) > hold:
            self._move = 1 if error > 0 else -1
        return {0: 0, 1: 2, -1: 3}[self._move]
