"""Reproducible noise: seeds, batches, variation seeds, per-step generators."""

from __future__ import annotations

import pytest
import torch

from modules.errors import UserError
from modules.sampling.noise import initial_noise, resolve_seed, slerp, step_generators

SHAPE = (4, 8, 8)


def _noise(seeds: list[int], **kwargs: object) -> torch.Tensor:
    return initial_noise(seeds, SHAPE, "cpu", torch.float32, **kwargs)


def test_matches_a_cpu_generator_draw() -> None:
    expected = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(1234), dtype=torch.float32)
    assert torch.equal(_noise([1234])[0], expected)


def test_same_seed_same_noise_and_different_seed_differs() -> None:
    assert torch.equal(_noise([7]), _noise([7]))
    assert not torch.equal(_noise([7]), _noise([8]))


def test_batch_image_equals_single_run() -> None:
    batch = _noise([100, 101, 102])
    assert batch.shape == (3, *SHAPE)
    for i in range(3):
        assert torch.equal(batch[i], _noise([100 + i])[0])


def test_device_and_dtype() -> None:
    noise = initial_noise([3], SHAPE, torch.device("cpu"), torch.float16)
    assert noise.dtype == torch.float16
    # Drawn in float32 first, so half precision is the same noise rounded.
    assert torch.equal(noise, _noise([3]).half())


def test_variation_endpoints() -> None:
    seed_noise, subseed_noise = _noise([10]), _noise([20])
    assert torch.equal(_noise([10], subseeds=[20], subseed_strength=0.0), seed_noise)
    assert torch.allclose(_noise([10], subseeds=[20], subseed_strength=1.0), subseed_noise, atol=1e-5)
    middle = _noise([10], subseeds=[20], subseed_strength=0.5)
    assert not torch.allclose(middle, seed_noise) and not torch.allclose(middle, subseed_noise)
    # slerp keeps unit variance where a plain average would shrink it to ~0.5.
    assert middle.std().item() == pytest.approx(seed_noise.std().item(), rel=0.2)


def test_variation_per_image_and_missing_subseed_is_zero() -> None:
    batch = _noise([10, 11], subseeds=[20], subseed_strength=0.3)
    assert torch.equal(batch[0], _noise([10], subseeds=[20], subseed_strength=0.3)[0])
    assert torch.equal(batch[1], _noise([11], subseeds=[0], subseed_strength=0.3)[0])


def test_slerp_parallel_inputs() -> None:
    a = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(slerp(0.25, a, a), a)


def test_bad_variation_strength() -> None:
    with pytest.raises(UserError, match="between 0 and 1"):
        _noise([1], subseeds=[2], subseed_strength=1.5)


def test_step_generators_continue_after_initial_noise() -> None:
    (generator,) = step_generators([42], SHAPE)
    reference = torch.Generator("cpu").manual_seed(42)
    initial = torch.randn(SHAPE, generator=reference)
    expected_step_noise = torch.randn(SHAPE, generator=reference)
    step_noise = torch.randn(SHAPE, generator=generator)
    assert torch.equal(step_noise, expected_step_noise)
    assert not torch.equal(step_noise, initial)


def test_step_generators_per_image_and_ensd() -> None:
    generators = step_generators([5, 6], SHAPE)
    assert len(generators) == 2 and all(g.device.type == "cpu" for g in generators)
    draws = [torch.randn(3, generator=g) for g in generators]
    assert not torch.equal(draws[0], draws[1])
    (ensd,) = step_generators([5], SHAPE, eta_noise_seed_delta=31337)
    assert torch.equal(torch.randn(3, generator=ensd), torch.randn(3, generator=torch.Generator().manual_seed(31342)))


def test_resolve_seed() -> None:
    assert resolve_seed(123) == 123
    assert resolve_seed(0) == 0
    seeds = {resolve_seed(-1) for _ in range(20)}
    assert all(0 <= s <= 2**32 - 1 for s in seeds) and len(seeds) > 1


@pytest.mark.parametrize("bad", [-2, 2**64, 1.5, "12", True])
def test_resolve_seed_rejects(bad: object) -> None:
    with pytest.raises(UserError, match="Seed"):
        resolve_seed(bad)  # type: ignore[arg-type]


# torch.randn(3, 4, device="cuda") after torch.manual_seed(0), as A1111 documents its NV source with.
CUDA_SEED_0 = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
               [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
               [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]


def test_nv_source_gives_cudas_numbers_on_the_cpu() -> None:
    from modules.sampling.philox import PhiloxNormal

    torch.testing.assert_close(PhiloxNormal(0).randn((3, 4)), torch.tensor(CUDA_SEED_0), atol=1e-6, rtol=0)
    # As a CUDA generator, each draw moves the stream on: the second draw is new numbers, the first of a
    # fresh stream the same again.
    stream = PhiloxNormal(0)
    first, second = stream.randn((3, 4)), stream.randn((3, 4))
    assert torch.equal(first, PhiloxNormal(0).randn((3, 4))) and not torch.equal(first, second)
    big = PhiloxNormal(2**40 + 7).randn((4, 64, 64))  # a 64-bit seed uses both key words
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02
    assert not torch.equal(big, PhiloxNormal(7).randn((4, 64, 64)))


def test_sources_on_the_cpu() -> None:
    shape = (4, 8, 8)
    cpu = initial_noise([3], shape, "cpu", torch.float32, source="CPU")
    # "GPU" on a machine without CUDA draws on the CPU, as A1111 does.
    assert torch.equal(initial_noise([3], shape, "cpu", torch.float32, source="GPU"), cpu)
    nv = initial_noise([3], shape, "cpu", torch.float32, source="NV")
    from modules.sampling.philox import PhiloxNormal

    assert torch.equal(nv[0], PhiloxNormal(3).randn(shape)) and not torch.equal(nv, cpu)
    # Step noise continues each image's stream after its start noise; ENSD starts a fresh one.
    [stream] = step_generators([3], shape, source="NV")
    reference = PhiloxNormal(3)
    reference.randn(shape)
    assert torch.equal(stream.randn(shape), reference.randn(shape))
    [fresh] = step_generators([3], shape, 31337, source="NV")
    assert torch.equal(fresh.randn(shape), PhiloxNormal(3 + 31337).randn(shape))
    with pytest.raises(UserError, match="random number source 'TPU'"):
        initial_noise([3], shape, "cpu", torch.float32, source="TPU")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_source_draws_on_the_gpu_and_nv_matches_it() -> None:
    shape = (4, 64, 64)
    gpu = initial_noise([5], shape, "cuda", torch.float32, source="GPU")
    expected = torch.randn(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    assert torch.equal(gpu[0], expected)
    nv = initial_noise([5], shape, "cuda", torch.float32, source="NV")
    torch.testing.assert_close(nv, gpu, atol=1e-5, rtol=0)
    [gen] = step_generators([5], shape, source="GPU", device="cuda")
    [nv_gen] = step_generators([5], shape, source="NV", device="cuda")
    torch.testing.assert_close(nv_gen.randn(shape).cuda(), torch.randn(shape, device="cuda", generator=gen),
                               atol=1e-5, rtol=0)
