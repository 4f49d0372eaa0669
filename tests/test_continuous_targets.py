"""Smoothed continuous action targets (HL-Gauss) and decoding a continuous action as the expectation over bins."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from generalist.agent import Agent, expected_bin_value, value_to_bin
from generalist.batch import collate
from generalist.model import Generalist, gaussian_bin_kernel, smoothed_bin_loss, tiny
from generalist.tokenizers import N_BINS, ActionSpec, continuous_to_bins, tokenize_episode

CONFIG = tiny(n_layer=1, d_model=64, n_head=4, d_ff=128, context=128)
LAYOUT = CONFIG.layout
FIRST = LAYOUT.continuous_offset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py says why


def _model(seed=0):
    torch.manual_seed(seed)
    return Generalist(CONFIG).eval()


def _episode_batch(spec, seed=0, n_steps=6):
    rng = np.random.default_rng(seed)
    observations = {"continuous": rng.normal(size=(n_steps, 3)).astype(np.float32)}
    actions = (rng.uniform(-1, 1, (n_steps, spec.size)) if spec.kind == "continuous"
               else rng.integers(0, spec.n, (n_steps, spec.size)))
    return collate([tokenize_episode(observations, actions, spec, LAYOUT)], LAYOUT)


# ------------------------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("sigma", [0.3, 0.75, 2.0, 10.0])
def test_the_kernel_is_a_discretized_gaussian_of_that_width(sigma):
    kernel = gaussian_bin_kernel(sigma).double()
    offsets = torch.arange(len(kernel), dtype=torch.float64) - (len(kernel) - 1) / 2
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(kernel, kernel.flip(0))  # symmetric around the exact bin
    assert kernel.argmax().item() == (len(kernel) - 1) // 2
    variance = (kernel * offsets**2).sum().item()
    if sigma >= 0.75:  # binned at unit width, a Gaussian wider than a bin has variance sigma^2 + 1/12 (Sheppard)
        assert variance == pytest.approx(sigma**2 + 1 / 12, rel=0.01)
    else:  # narrower: most mass in the exact bin
        assert kernel.max().item() > 0.85 and variance < sigma**2 + 1 / 12


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan, math.inf])
def test_a_kernel_needs_a_positive_finite_width(sigma):
    with pytest.raises(ValueError, match="action_sigma"):
        gaussian_bin_kernel(sigma)


# --------------------------------------------------------------------------------------------- the loss


def test_a_narrow_gaussian_is_the_exact_bins_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(16, LAYOUT.table_size)
    targets = FIRST + torch.randint(0, N_BINS, (16,))
    exact = F.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(smoothed_bin_loss(logits, targets, FIRST, 0.05), exact, atol=1e-5)


def test_the_smoothed_loss_is_the_cross_entropy_against_the_gaussian_cut_at_the_ends():
    torch.manual_seed(1)
    logits = torch.randn(3, LAYOUT.table_size)
    bins = torch.tensor([0, 1, 700])  # two at the lower end, where the Gaussian is cut
    sigma = 3.0
    expected = []
    for row, b in enumerate(bins.tolist()):
        centres = torch.arange(N_BINS, dtype=torch.float64)
        cdf = lambda x, b=b: 0.5 * (1 + torch.erf((x - b) / (sigma * math.sqrt(2))))  # noqa: E731
        mass = cdf(centres + 0.5) - cdf(centres - 0.5)
        mass[(centres - b).abs() > math.ceil(4 * sigma)] = 0
        mass /= mass.sum()
        log_p = F.log_softmax(logits[row].double(), dim=0)[FIRST:FIRST + N_BINS]
        expected.append(-(mass * log_p).sum())
    got = smoothed_bin_loss(logits, bins + FIRST, FIRST, sigma)
    assert torch.allclose(got.double(), torch.stack(expected), atol=1e-4)


def test_a_near_miss_costs_less_than_a_far_one():
    logits = torch.zeros(2, LAYOUT.table_size)
    target = FIRST + 500
    logits[0, target + 2] = 8.0  # confident two bins off
    logits[1, target + 200] = 8.0  # confident 200 bins off
    targets = torch.tensor([target, target])
    smoothed = smoothed_bin_loss(logits, targets, FIRST, 2.0)
    exact = F.cross_entropy(logits, targets, reduction="none")
    assert smoothed[0] < smoothed[1] - 0.5  # 8 nats times the 12% of the mass two bins off
    assert exact[0] == pytest.approx(exact[1].item())  # the exact bin cannot tell them apart


def test_forward_smooths_continuous_actions_and_logs_the_exact_loss():
    model = _model()
    batch = _episode_batch(ActionSpec("continuous", size=2))
    with torch.no_grad():
        exact, smooth = model(batch), model(batch, action_sigma=4.0)
    assert smooth.loss.item() != pytest.approx(exact.loss.item(), rel=1e-3)
    # What is logged stays the exact bin's cross-entropy, comparable with a run that does not smooth.
    assert smooth.action_loss.item() == pytest.approx(exact.action_loss.item(), rel=1e-5)
    assert torch.allclose(smooth.row_loss, exact.row_loss)


def test_forward_leaves_discrete_actions_alone():
    model = _model()
    batch = _episode_batch(ActionSpec("discrete", size=1, n=4))
    with torch.no_grad():
        assert model(batch, action_sigma=4.0).loss.item() == pytest.approx(model(batch).loss.item(), rel=1e-6)


# ----------------------------------------------------------------------------------- decoding the mean


@settings(max_examples=200, deadline=None)
@given(st.floats(-1.0, 1.0, allow_nan=False))
def test_value_to_bin_bins_as_the_tokenizer_does(value):
    assert value_to_bin(torch.tensor([value], dtype=torch.float64)).item() == continuous_to_bins(
        np.array([value]), mu_law=False)[0]


def test_the_expectation_over_bins():
    logits = torch.full((3, LAYOUT.table_size), -1e4)
    logits[0, FIRST + 100] = 0.0  # all mass on one bin: its centre
    logits[1, FIRST + 0] = logits[1, FIRST + N_BINS - 1] = 0.0  # half at each end: the middle
    logits[2, FIRST - 1] = 1e4  # a huge logit outside the continuous bins changes nothing
    logits[2, FIRST + 600] = 0.0
    centre = lambda b: (b + 0.5) * 2 / N_BINS - 1  # noqa: E731
    got = expected_bin_value(logits, FIRST)
    assert got.tolist() == pytest.approx([centre(100), 0.0, centre(600)], abs=1e-6)


def test_an_agent_acting_on_the_mean_feeds_back_the_bin_nearest_to_it():
    spec = ActionSpec("continuous", size=2)
    rng = np.random.default_rng(3)
    mean_agent = Agent(_model(), spec, continuous_decoding="mean")
    mode_agent = Agent(_model(), spec)
    mean_agent.reset([None] * 3)
    mode_agent.reset([None] * 3)
    for _ in range(4):
        observations = [{"continuous": rng.normal(size=3).astype(np.float32)} for _ in range(3)]
        mean_step, mode_step = mean_agent.step(observations), mode_agent.step(observations)
        assert mean_step.actions.shape == (3, 2) and (np.abs(mean_step.actions) <= 1).all()
        assert (mean_step.ids == continuous_to_bins(mean_step.actions, mu_law=False) + FIRST).all()
        # An untrained model spreads its mass: the mean lies far from the most likely bin's centre.
        assert not np.allclose(mean_step.actions, mode_step.actions, atol=0.05)


def test_discrete_actions_ignore_mean_decoding_and_a_wrong_name_is_refused():
    spec = ActionSpec("discrete", size=1, n=3)
    agent = Agent(_model(), spec, continuous_decoding="mean")
    agent.reset([None])
    assert agent.act([{"continuous": np.zeros(3, np.float32)}]).dtype == np.int64
    with pytest.raises(ValueError, match="continuous_decoding"):
        Agent(_model(), spec, continuous_decoding="median")
