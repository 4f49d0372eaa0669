"""Precision chosen by the machine: the capability check, the matmul test, explicit requests, autocast."""

import math

import pytest
import torch

from generalist.precision import (
    PRECISIONS,
    Precision,
    denormals_flushed,
    matmul_flops,
    resolve_device,
    resolve_precision,
)


class FakeMeasure:
    """A stand-in for `matmul_flops` that answers fixed FLOP/s and records what it was asked."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.flops = {torch.float32: fp32, torch.bfloat16: bf16}
        self.calls: list[torch.dtype] = []

    def __call__(self, dtype: torch.dtype) -> float:
        self.calls.append(dtype)
        return self.flops[dtype]


@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT", "NO AVX", "SVE256", "VSX"])
def test_auto_without_avx512_is_fp32_without_measuring(capability):
    measure = FakeMeasure(fp32=1e9, bf16=1e12)  # would pick bf16 if it were asked
    chosen = resolve_precision("auto", "cpu", capability=capability, measure=measure)
    assert chosen.name == "fp32"
    assert not chosen.bf16
    assert measure.calls == []
    assert capability in chosen.reason and "no native bf16" in chosen.reason


def test_auto_with_avx512_picks_bf16_when_it_is_faster():
    measure = FakeMeasure(fp32=160e9, bf16=390e9)
    chosen = resolve_precision("auto", "cpu", capability="AVX512", measure=measure, flags=set())
    assert chosen.name == "bf16"
    assert sorted(measure.calls, key=str) == [torch.bfloat16] * 3 + [torch.float32] * 3  # best of three each
    assert "AVX512" in chosen.reason and "2.44x" in chosen.reason


@pytest.mark.parametrize(("fp32", "bf16"), [(100e9, 1e9), (100e9, 100e9), (100e9, 119e9)])
def test_auto_with_avx512_stays_fp32_unless_bf16_is_clearly_faster(fp32, bf16):
    measure = FakeMeasure(fp32=fp32, bf16=bf16)
    chosen = resolve_precision("auto", "cpu", capability="AVX512", measure=measure, flags={"avx512f"})
    assert chosen.name == "fp32"
    assert len(measure.calls) == 6
    assert "matmul test" in chosen.reason


def test_auto_takes_bf16_at_exactly_the_threshold():
    chosen = resolve_precision("auto", capability="AVX512", measure=FakeMeasure(fp32=100e9, bf16=120e9), flags=set())
    assert chosen.name == "bf16"


def test_auto_trusts_the_amx_flag_without_a_noisy_timing():
    measure = FakeMeasure(fp32=100e9, bf16=1e9)  # a timing under load that would say fp32
    flags = {"avx512f", "avx512_bf16", "amx_bf16"}
    chosen = resolve_precision("auto", "cpu", capability="AVX512", measure=measure, flags=flags)
    assert chosen.name == "bf16" and measure.calls == [] and "amx_bf16" in chosen.reason


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [(130e9, 65e9, "fp32"), (180e9, 400e9, "bf16")])
def test_auto_times_bf16_where_the_cpu_has_avx512_bf16_but_no_amx(fp32, bf16, expected):
    # An Intel Xeon with AVX512_BF16 and no AMX trained 0.67x as fast in bf16; an AMD EPYC with it, 2x.
    measure = FakeMeasure(fp32=fp32, bf16=bf16)
    chosen = resolve_precision("auto", "cpu", capability="AVX512", measure=measure, flags={"avx512f", "avx512_bf16"})
    assert chosen.name == expected and len(measure.calls) == 6 and "matmul test" in chosen.reason


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_explicit_requests_are_honoured_without_measuring(requested, capability):
    measure = FakeMeasure(fp32=1e9, bf16=1e9)
    chosen = resolve_precision(requested, torch.device("cpu"), capability=capability, measure=measure)
    assert chosen.name == requested
    assert measure.calls == []
    assert chosen.reason.startswith(f"asked for {requested}")


def test_bf16_asked_for_on_a_cpu_without_native_bf16_says_it_will_be_slow():
    chosen = resolve_precision("bf16", "cpu", capability="AVX2")
    assert chosen.bf16
    assert "AVX2" in chosen.reason and "slow" in chosen.reason


@pytest.mark.parametrize("requested", ["fp16", "BF16", "", "float32"])
def test_an_unknown_precision_is_an_error_naming_the_choices(requested):
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        resolve_precision(requested, capability="AVX2")


def test_precision_names_are_checked():
    assert PRECISIONS == ("auto", "fp32", "bf16")
    with pytest.raises(ValueError, match="fp16"):
        Precision("fp16", "a typo")


def test_autocast_is_enabled_exactly_for_bf16():
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with Precision("bf16", "test").autocast("cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.bfloat16
    with Precision("fp32", "test").autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_matmul_flops_is_a_positive_finite_rate():
    flops = matmul_flops(torch.float32, size=64, seconds=0.02)
    assert math.isfinite(flops) and flops > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_cuda_follows_native_bf16_support():
    measure = FakeMeasure(fp32=1e9, bf16=1e9)
    chosen = resolve_precision("auto", "cuda", capability="AVX2", measure=measure)  # the host CPU plays no part
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert chosen.name == ("bf16" if native else "fp32")
    assert measure.calls == []
    assert "CUDA" in chosen.reason
    with chosen.autocast("cuda"):
        product = torch.randn(4, 8, device="cuda") @ torch.randn(8, 2, device="cuda")
    assert product.dtype == (torch.bfloat16 if native else torch.float32)


def test_auto_device_is_the_cpu_without_a_gpu_and_an_absent_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_denormal_floats_are_flushed_to_zero_inside_the_block_only():
    def denormal() -> float:  # made and multiplied here: a float made while flushing is already 0
        return (torch.tensor([1e-39]) * 1.0).item()  # below float32's smallest normal, 1.2e-38

    torch.set_flush_denormal(False)
    assert denormal() > 0.0
    with denormals_flushed() as flushed:
        if flushed:
            assert denormal() == 0.0 and (torch.tensor([1e-37]) * 1.0).item() > 0.0  # normals stay
            with denormals_flushed():  # `run` trains inside its command's block
                pass
            assert denormal() == 0.0  # the outer block's still on
    assert denormal() > 0.0  # off again: hypothesis, for one, refuses to run with subnormals flushed
