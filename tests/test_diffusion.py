"""The normal DiT, the RePaint-style inpainting loop and the PIL schedule (tiny, CPU)."""

import threading
import time

import numpy as np
import pytest
import torch

from models.dit import (DiTConfig, DiTTrainConfig, build_dit, build_scheduler, diffusion_loss, load_dit,
                        predict_noise, random_masks, save_dit, train_dit)
from models.configs import EngineConfig
from models.engine import chunk_rows, pool, use_engine
from models.inpaint import InpaintConfig, feather_weights, inpaint, jump_schedule
from models.sampling import ddim_step, ddim_timesteps, noised_known, sample
from models.schedule import epoch_indices, fixed_order, pil_prefix, pil_share

TINY = DiTConfig(image_size=16, patch_size=4, depth=2, num_heads=2, head_dim=8, num_train_timesteps=100)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_dit(TINY), build_scheduler(TINY)


def test_forward_has_no_nan_and_backward_reaches_every_parameter():
    model, scheduler = _tiny_model()
    x0 = torch.rand(3, 1, 16, 16) * 2 - 1
    loss = diffusion_loss(model, scheduler, x0, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_config_is_validated():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        DiTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="prediction must be one of epsilon, sample"):
        DiTConfig(prediction="v")


def _clean_image_model():
    """A DiT that predicts the clean image, with its output layer zeroed: it always says x0 = 0."""
    config = DiTConfig(**{**TINY.__dict__, "prediction": "sample"})
    torch.manual_seed(0)
    model = build_dit(config).eval()
    torch.nn.init.zeros_(model.proj_out_2.weight)
    torch.nn.init.zeros_(model.proj_out_2.bias)
    return model, build_scheduler(config), config


def test_a_clean_image_prediction_reaches_the_sampler_as_its_noise():
    model, scheduler, config = _clean_image_model()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 70])
    ab = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        eps = predict_noise(model, x, t)
        assert torch.allclose(eps, x / (1 - ab).sqrt(), atol=1e-5)  # x_t = sqrt(ab) * 0 + sqrt(1 - ab) * eps
        assert torch.allclose(ddim_step(scheduler, x[:1], eps[:1], 3, -1), torch.zeros(1, 1, 16, 16), atol=1e-4)
        assert sample(model, scheduler, 2, 16, steps=3).sub(0.5).abs().max() < 1e-3  # x0 = 0 is mid-grey
        assert load_dit(save_dit(model, config))[1].prediction == "sample"
        assert torch.allclose(predict_noise(load_dit(save_dit(model, config))[0], x, t), eps)


def test_the_clean_image_loss_is_its_error_weighted_by_one_over_the_noise_share_capped():
    model, scheduler, _ = _clean_image_model()
    x0 = torch.rand(3, 1, 16, 16) * 2 - 1
    loss = diffusion_loss(model, scheduler, x0, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)  # the loss's own draws: the noise, then the timesteps
    torch.randn(x0.shape, generator=replay)
    t = torch.randint(0, 100, (3,), generator=replay)
    share = (1 - scheduler.alphas_cumprod[t]).clamp(min=0.05).view(-1, 1, 1, 1)
    assert torch.allclose(loss, (x0**2 / share).mean(), rtol=1e-4)  # the model says x0 = 0


def test_ddim_step_inverts_the_forward_noising_with_the_true_noise():
    _, scheduler = _tiny_model()
    x0 = torch.rand(2, 1, 16, 16) * 1.6 - 0.8
    eps = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for t in (5, 50, 90):  # at t = 99 the cosine schedule leaves ab ~ 1e-5: float error dominates
        ab = scheduler.alphas_cumprod[t]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        assert torch.allclose(ddim_step(scheduler, xt, eps, t, -1), x0, atol=1e-4)
        t_prev = t // 2  # one deterministic step lands exactly on the forward chain at t_prev
        ab_prev = scheduler.alphas_cumprod[t_prev]
        assert torch.allclose(ddim_step(scheduler, xt, eps, t, t_prev), ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps,
                              atol=1e-4)


def test_timesteps_and_jump_schedule():
    _, scheduler = _tiny_model()
    times = ddim_timesteps(scheduler, 10)
    assert times[0] == 99 and times[-1] == 0 and times == sorted(times, reverse=True) and len(times) == 10
    moves = jump_schedule(10, 5, 2)
    down = [m for m in moves if m[1] > m[0]]
    up = [m for m in moves if m[1] < m[0]]
    assert len(down) == 20 and len(up) == 10  # each block denoised twice, with one jump back
    position = 0
    for a, b in moves:
        assert a == position and abs(a - b) == 1
        position = b
    assert position == 10
    assert jump_schedule(10, 5, 1) == [(i, i + 1) for i in range(10)]


def test_training_lowers_the_loss_and_is_seeded():
    images = torch.zeros(16, 1, 16, 16)
    images[:, :, 4:12, 4:12] = 0.8  # a bright square on black: easy to learn
    train = DiTTrainConfig(steps=60, batch_size=8, lr=2e-3, warmup_steps=5, seed=3)
    model, ema, history = train_dit(images, TINY, train)
    losses = history["loss"]
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:15])
    model2, _, history2 = train_dit(images, TINY, train)
    assert history2["loss"] == losses
    with pytest.raises(ValueError, match="expected"):
        train_dit(torch.zeros(4, 1, 8, 8), TINY, train)


def test_checkpoint_round_trip_carries_its_config():
    model, scheduler = _tiny_model()
    data = save_dit(model, TINY, {"train_shards": ["abc"]})
    loaded, config, extra = load_dit(data)
    assert config == TINY and extra == {"train_shards": ["abc"]}
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 70])
    with torch.no_grad():
        assert torch.equal(predict_noise(model.eval(), x, t), predict_noise(loaded, x, t))


def test_sampling_is_seeded_and_in_range():
    model, scheduler = _tiny_model()
    a = sample(model.eval(), scheduler, 2, 16, steps=2, generator=torch.Generator().manual_seed(5))
    b = sample(model, scheduler, 2, 16, steps=2, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2, 1, 16, 16) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def _mask():
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:10, 5:12] = 1.0
    return mask


@pytest.mark.parametrize("feather", [0, 2])
def test_inpainting_keeps_unmasked_pixels_bit_exact(feather):
    model, scheduler = _tiny_model()
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    mask = _mask()
    config = InpaintConfig(steps=4, jump_length=2, resample=2, feather_px=feather)
    out = inpaint(model.eval(), scheduler, images, mask, config, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and torch.equal(out[mask == 0], images[mask == 0])
    assert (out[mask == 1] - images[mask == 1]).abs().mean() > 0.05  # the region was regenerated
    again = inpaint(model, scheduler, images, mask, config, torch.Generator().manual_seed(0))
    other = inpaint(model, scheduler, images, mask, config, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_per_image_generators_make_results_independent_of_the_batch():
    model, scheduler = _tiny_model()
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(3, 1, 16, 16)
    mask[:, :, 3:9, 3:9] = 1
    config = InpaintConfig(steps=3, jump_length=2, resample=2)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    together = inpaint(model.eval(), scheduler, images, mask, config, gens([10, 11, 12]))
    alone = inpaint(model, scheduler, images[1:2], mask[1:2], config, gens([11]))
    assert torch.allclose(together[1:2], alone, atol=1e-5)
    with pytest.raises(ValueError, match="generators"):
        inpaint(model, scheduler, images, mask, config, gens([1]))


@pytest.mark.parametrize("init,eta", [("noise", 0.0), ("harmonic", 0.0), ("noise", 0.5)])
def test_the_noise_drawn_up_front_is_the_noise_drawn_step_by_step(init, eta):
    """The tape (what CUDA uses: no host round trip per step) gives the same images to the bit,
    with one generator per image and with one for the batch; its draw count is exact."""
    model, scheduler = _tiny_model()
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(3, 1, 16, 16)
    mask[:, :, 3:9, 3:9] = 1
    config = InpaintConfig(steps=4, jump_length=2, resample=2, eta=eta, init=init, strength=0.8)
    for gens in (lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)], lambda: torch.Generator().manual_seed(9)):
        step_by_step = inpaint(model.eval(), scheduler, images, mask, config, gens(), tape=False)
        taped = inpaint(model, scheduler, images, mask, config, gens(), tape=True)
        assert torch.equal(step_by_step, taped)


def test_guidance_runs_both_predictions_in_one_pass_with_the_same_result():
    from models.dit import label_input

    config = DiTConfig(image_size=16, patch_size=4, depth=1, num_heads=2, head_dim=8, conditioning="labels",
                       num_labels=3)
    torch.manual_seed(0)
    model, scheduler = build_dit(config).eval(), build_scheduler(config)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    out = sample(model, scheduler, 2, 16, steps=3, generator=torch.Generator().manual_seed(2), labels=labels,
                 guidance=2.0)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))  # the two passes, by hand
    for i, t in enumerate(times := ddim_timesteps(scheduler, 3)):
        now = torch.full((2,), t, dtype=torch.long)
        with torch.no_grad():
            given, free = predict_noise(model, x, now, None, label_input(labels)), predict_noise(model, x, now)
        x = ddim_step(scheduler, x, free + 2.0 * (given - free), t, times[i + 1] if i + 1 < len(times) else -1)
    assert torch.allclose(out, ((x.clamp(-1, 1) + 1) / 2), atol=1e-5)


def test_checked_output_slices():
    """diffusers-style regression check: a fixed tiny model and seed give these values.
    (An untrained model's noise estimates push most inpainted pixels to the clamp.)"""
    model, scheduler = _tiny_model(seed=0)
    x = torch.linspace(-1, 1, 256).reshape(1, 1, 16, 16)
    with torch.no_grad():
        eps = predict_noise(model.eval(), x, torch.tensor([40]))
    assert torch.allclose(eps[0, 0, 8, 4:8], torch.tensor([-0.0603, 0.3212, 0.5122, -0.3474]), atol=1e-3)
    images = torch.linspace(0, 1, 256).reshape(1, 1, 16, 16).repeat(2, 1, 1, 1)
    out = inpaint(model, scheduler, images, _mask(), InpaintConfig(steps=2, jump_length=1, resample=2),
                  torch.Generator().manual_seed(0))
    assert torch.allclose(out[0, 0, 5, 5:9], torch.tensor([1.0, 0.9945, 0.9835, 0.9939]), atol=1e-3)
    assert abs(float(out[_mask() == 1].mean()) - 0.5688) < 1e-3


def test_known_region_noising_matches_the_forward_process():
    _, scheduler = _tiny_model()
    x0 = torch.zeros(4000, 1, 1, 1) + 0.5
    noisy = noised_known(scheduler, x0, 50, torch.Generator().manual_seed(0))
    ab = float(scheduler.alphas_cumprod[50])
    assert abs(float(noisy.mean()) - ab**0.5 * 0.5) < 0.05 and abs(float(noisy.std()) - (1 - ab) ** 0.5) < 0.05
    assert torch.equal(noised_known(scheduler, x0, -1, None), x0)


def test_feather_weights_stay_inside_the_mask():
    mask = _mask()
    weight = feather_weights(mask, 2)
    assert torch.equal(weight[mask == 0], torch.zeros_like(weight[mask == 0]))
    assert weight[0, 0, 4, 5] == 0.5 and weight[0, 0, 6, 8] == 1.0
    assert torch.equal(feather_weights(mask, 0), mask)


def test_pil_schedule():
    assert pil_share(0, 0.3) == 0.0 and 0.25 < pil_share(1, 0.3) < 0.26
    shares = [pil_share(n, 0.5) for n in range(20)]
    assert shares == sorted(shares) and shares[-1] > 0.99
    assert [pil_prefix(n, 0.5, 100) for n in (0, 1, 2)] == [0, 39, 63]
    assert np.array_equal(fixed_order(50, 7), fixed_order(50, 7)) and not np.array_equal(fixed_order(50, 7), fixed_order(50, 8))
    early, late = epoch_indices(1, 0.5, 50, 7), epoch_indices(4, 0.5, 50, 7)
    assert np.array_equal(late[: len(early)], early)  # a growing prefix of one fixed order
    with pytest.raises(ValueError):
        pil_share(-1, 0.5)


def test_random_masks_are_lesion_sized_blobs_with_a_share_of_full_masks():
    masks = random_masks(400, 32, torch.Generator().manual_seed(0), full_share=0.1)
    full = masks.flatten(1).mean(1) == 1.0
    assert masks.shape == (400, 1, 32, 32) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert 0.05 < float(full.float().mean()) < 0.16
    area = masks[~full].flatten(1).mean(1)
    assert float(area.min()) > 0 and 0.03 < float(area.median()) < 0.3  # lesion-sized, never empty


def test_an_inpainting_dit_fills_a_hole_from_its_surroundings():
    """Flat films of random grey levels: the level inside the hole is known only from the film
    around it. A briefly trained inpainting DiT fills the hole with each film's own level, and
    keeps every pixel outside the hole."""
    g = torch.Generator().manual_seed(0)
    films = (0.2 + 0.6 * torch.rand(256, 1, 1, 1, generator=g)).expand(256, 1, 16, 16).contiguous()
    config = DiTConfig(image_size=16, patch_size=4, depth=2, num_heads=2, head_dim=16, num_train_timesteps=100,
                       conditioning="mask")
    model, ema, _ = train_dit(films, config, DiTTrainConfig(steps=400, batch_size=32, lr=1e-3, warmup_steps=10,
                                                            full_mask_share=0.0))
    ema.copy_to(model)
    levels = torch.tensor([0.25, 0.4, 0.55, 0.7])
    test = levels.reshape(4, 1, 1, 1).expand(4, 1, 16, 16).contiguous()
    hole = torch.zeros(4, 1, 16, 16)
    hole[:, :, 4:12, 4:12] = 1
    filled = inpaint(model.eval(), build_scheduler(config), test, hole,
                     InpaintConfig(steps=10, jump_length=5, resample=2), torch.Generator().manual_seed(1))
    inside = filled[:, 0, 4:12, 4:12].mean(dim=(1, 2))
    assert torch.allclose(inside, levels, atol=0.06), inside  # each film's own level
    assert torch.equal(filled[hole == 0], test[hole == 0])
    with pytest.raises(ValueError, match="needs cond"):
        predict_noise(model, test, torch.tensor([5] * 4))  # the inpainting model needs the known image


def test_the_feature_ood_score_is_a_shrunk_mahalanobis_distance_calibrated_on_held_out_images():
    """models/ood.FeatureScorer mechanics: Ledoit-Wolf as scikit-learn computes it, the threshold
    rejecting the stated share of its calibration set, far-off images scored higher, and the
    stages of a plain and a headed classifier alike (what it catches: benchmarks/bench_ood.py)."""
    from sklearn.covariance import ledoit_wolf as reference

    from models.classifier import ClassifierConfig, build_classifier, stage_features
    from models.ood import FeatureScorer, ledoit_wolf

    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 50)) @ rng.normal(size=(50, 50))  # more features than images
    mean, covariance, shrinkage = ledoit_wolf(features)
    expected, expected_shrinkage = reference(features)
    assert np.allclose(covariance, expected) and np.isclose(shrinkage, expected_shrinkage)
    assert np.allclose(mean, features.mean(axis=0)) and 0 < shrinkage < 1

    torch.manual_seed(0)
    net = build_classifier(ClassifierConfig("resnet18", 3, 32)).eval()
    films = 0.5 + 0.1 * torch.randn(120, 1, 32, 32).clamp(-2, 2)
    scorer = FeatureScorer(net, films[:80], films[80:], false_rejection=0.1)
    assert abs(scorer.accept(films[80:]).mean() - 0.9) <= 0.05
    assert np.allclose(scorer.score(films[:5]), scorer.score(films[:10])[:5])  # batch-mates do not matter
    noise = torch.rand(20, 1, 32, 32)
    assert np.median(scorer.score(noise)) > np.median(scorer.score(films[80:]))
    with pytest.raises(ValueError, match="at least 20"):
        FeatureScorer(net, films[:10], films[80:])
    headed = build_classifier(ClassifierConfig("resnet18", 3, 32, se=True))  # TRCGL-Net parts: the backbone's stages
    assert [f.shape for f in stage_features(headed, films[:3])] == [f.shape for f in stage_features(net, films[:3])]


def test_ood_scores_are_per_image_reproducible_and_calibrated_to_the_false_rejection_rate():
    """models/ood.py mechanics (what it catches is measured by benchmarks/bench_ood.py)."""
    from models.ood import OODConfig, OODScorer, reconstruction_errors

    torch.manual_seed(0)
    config = DiTConfig(image_size=16, patch_size=4, depth=1, num_heads=2, head_dim=8)
    model, scheduler = build_dit(config).eval(), build_scheduler(config)
    images = torch.rand(40, 1, 16, 16)
    ood_config = OODConfig(levels=(50, 200), steps=3, false_rejection=0.1)
    errors = reconstruction_errors(model, scheduler, images[:4], ood_config,
                                   [torch.Generator().manual_seed(i) for i in range(4)])
    assert errors.shape == (4, 2) and (errors > 0).all()
    scorer = OODScorer(model, scheduler, images, ood_config)
    assert abs(scorer.accept(images).mean() - 0.9) <= 0.05  # the threshold rejects 10% of its calibration set
    assert np.array_equal(scorer.score(images[:5]), scorer.score(images[:5]))  # same image, same score
    assert np.allclose(scorer.score(images[:5]), scorer.score(images[:10])[:5])  # batch-mates do not matter
    with pytest.raises(ValueError, match="at least 20"):
        OODScorer(model, scheduler, images[:5], ood_config)


def test_presets_give_dit_sizes_with_256_tokens_and_their_flops():
    from models.dit import PRESETS, flops_per_call, preset_sizes

    assert preset_sizes("small", 128) == {"depth": 12, "num_heads": 6, "head_dim": 64, "patch_size": 8}
    assert preset_sizes("base", 256)["patch_size"] == 16 and preset_sizes("tiny", 64)["patch_size"] == 4
    with pytest.raises(ValueError, match="tiny, small, base"):
        preset_sizes("huge", 64)
    # the shipped size (width 128, depth 6, 256 tokens): ~0.81 GFLOP a call
    config = DiTConfig(image_size=64, **preset_sizes("tiny", 64))
    tiny = flops_per_call(config)
    assert 0.80e9 < tiny < 0.82e9
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # counts all but CPU attention
        build_dit(config)(torch.zeros(1, 1, 64, 64), timestep=torch.zeros(1, dtype=torch.long),
                          class_labels=torch.zeros(1, dtype=torch.long))
    attention = config.depth * 4 * 256 ** 2 * 128
    assert abs(counter.get_total_flops() + attention - tiny) / tiny < 0.01
    assert set(PRESETS) == {"tiny", "small", "base"}


@pytest.mark.parametrize("engine", [EngineConfig(rows=2), EngineConfig(rows=8, compile=True)])
def test_model_batches_and_compiled_buckets_leave_each_image_as_it_was(engine, monkeypatch):
    """The DiT's calls run in the engine's chunks (the model batch, not the caller's), padded to
    power-of-two buckets when compiled; the images are those of one call (compiled here with
    torch.compile's eager backend: the CPU has no use for inductor)."""
    from models import dit as dit_module
    from models import engine as engine_module

    model, scheduler = _tiny_model()
    images = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(5, 1, 16, 16)
    mask[:, :, 3:9, 3:9] = 1
    config = InpaintConfig(steps=3, jump_length=2, resample=2)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(5)]  # noqa: E731
    whole = inpaint(model.eval(), scheduler, images, mask, config, gens())
    monkeypatch.setattr(engine_module, "COMPILE_BACKEND", "eager")
    rows_seen, forward = [], dit_module._forward
    monkeypatch.setattr(dit_module, "_forward", lambda net, x, t, labels: rows_seen.append(len(x)) or
                        forward(net, x, t, labels))
    chunked = inpaint(use_engine(model, engine), scheduler, images, mask, config, gens())
    assert torch.allclose(chunked, whole, atol=1e-5)
    assert set(rows_seen) == ({2, 1} if not engine.compile else {8})  # 5 rows: 2 + 2 + 1, or padded to 8
    assert chunk_rows(model, EngineConfig()) is None  # the CPU by default: a batch's rows at once


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_inpaintings_from_two_threads_share_each_network_call_and_keep_their_images(monkeypatch):
    """Continuous batching (models/engine.Pool): a job that arrives while another is under way
    joins its calls, each row at its own timestep, so there are fewer calls than the two jobs make
    apart; each job's images are those it makes alone."""
    from models import dit as dit_module

    model, scheduler = _tiny_model()
    model.eval()
    images = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(5, 1, 16, 16)
    mask[:, :, 3:9, 3:9] = 1
    jobs = [(slice(0, 3), InpaintConfig(steps=4, jump_length=2, resample=2), [0, 1, 2]),
            (slice(3, 5), InpaintConfig(steps=5, resample=1, init="harmonic", strength=0.6), [3, 4])]
    calls, hold = [], threading.Event()
    forward = dit_module._forward

    def watched(net, x, t, labels):
        if hold.is_set():  # the first job's first call waits (bounded) for the second job to arrive
            hold.clear()
            _wait_for(lambda: len(pool(model)._jobs) == 2)
        calls.append((len(x), set(t.tolist())))
        return forward(net, x, t, labels)

    monkeypatch.setattr(dit_module, "_forward", watched)

    def run(job):
        rows, config, seeds = job
        return inpaint(model, scheduler, images[rows], mask[rows], config,
                       [torch.Generator().manual_seed(s) for s in seeds])

    alone = [run(job) for job in jobs]
    apart = len(calls)
    calls.clear()
    hold.set()
    together = [None, None]
    threads = [threading.Thread(target=lambda k=k: together.__setitem__(k, run(jobs[k]))) for k in (0, 1)]
    threads[0].start()
    _wait_for(lambda: len(pool(model)._jobs) == 1)
    threads[1].start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(together, alone))
    assert any(rows == 5 and len(times) == 2 for rows, times in calls)  # both jobs' rows, each at its own step
    assert len(calls) < apart and not pool(model)._jobs


def test_every_compiled_bucket_compiles_within_torch_compiles_limit(monkeypatch):
    """Calls of 1 to 1,024 rows meet few enough shapes that torch.compile compiles each (past its
    limit of 8 per function it would run the rest eager, the largest calls included)."""
    from models import engine as engine_module

    compiled = []
    torch._dynamo.reset()  # no entries left by other tests' compiled calls
    monkeypatch.setattr(engine_module, "COMPILE_BACKEND", lambda graph, inputs: compiled.append(1) or graph.forward)
    model, _ = _tiny_model()
    use_engine(model.eval(), EngineConfig(rows=1024, compile=True))
    sizes = [1, 2, 3, 5, 9, 17, 33, 65, 129, 257, 513, 1000, 4]
    with torch.inference_mode():
        for n in sizes:
            assert predict_noise(model, torch.zeros(n, 1, 16, 16), torch.zeros(n, dtype=torch.long)).shape[0] == n
    assert len(compiled) == len({engine_module.bucket(n, 1024) for n in sizes}) == 7


class _CountJob:
    """A job of ``calls`` network calls on ``rows`` rows filled with ``mark`` (the pool's Job)."""

    def __init__(self, rows, calls, mark, fail_take=False):
        self.rows, self.left, self.mark, self.fail_take, self.seen = rows, calls, mark, fail_take, []

    def next_call(self):
        return (torch.full((self.rows, 1, 2, 2), self.mark), torch.zeros(self.rows, dtype=torch.long), None) \
            if self.left else None

    def take(self, eps):
        if self.fail_take:
            raise ValueError(f"job {self.mark} cannot step")
        self.seen.append(eps.clone())
        self.left -= 1


def test_a_failed_call_or_step_fails_its_own_job_only():
    """Three jobs in one tick: a call that fails on one job's rows (too many for memory, say) is made
    again for each job alone; a job whose own step fails ends alone; the others finish."""
    from models.engine import Pool

    pool_, jobs = Pool(), [_CountJob(2, 3, 1.0), _CountJob(1, 2, 7.0), _CountJob(3, 2, 2.0, fail_take=True)]
    sizes, errors = [], {}

    def predict(x, t, cond):
        sizes.append(len(x))
        if (x == 7.0).any():
            raise RuntimeError("out of memory")
        return x * 2

    def run(job):
        try:
            pool_.run(job, predict)
        except Exception as exc:  # noqa: BLE001
            errors[job.mark] = exc

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    with pool_.calls:  # no tick until all three have joined
        for thread in threads:
            thread.start()
        _wait_for(lambda: len(pool_._jobs) == 3)
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    # all three's call, which fails; each job's alone (in the order they joined); the first job's last two
    assert sizes[0] == 6 and sorted(sizes[1:4]) == [1, 2, 3] and sizes[4:] == [2, 2]
    assert set(errors) == {7.0, 2.0} and "out of memory" in str(errors[7.0]) and "cannot step" in str(errors[2.0])
    assert len(jobs[0].seen) == 3 and all(torch.equal(eps, torch.full((2, 1, 2, 2), 2.0)) for eps in jobs[0].seen)
    assert not pool_._jobs and not pool_._ended


def test_a_failed_network_call_fails_its_jobs_and_leaves_the_pool_working(monkeypatch):
    from models import dit as dit_module

    model, scheduler = _tiny_model()
    images, mask = torch.rand(2, 1, 16, 16), torch.ones(2, 1, 16, 16)
    forward = dit_module._forward
    monkeypatch.setattr(dit_module, "_forward", lambda *a: (_ for _ in ()).throw(RuntimeError("device lost")))
    with pytest.raises(RuntimeError, match="device lost"):
        inpaint(model.eval(), scheduler, images, mask, InpaintConfig(steps=2))
    assert not pool(model)._jobs
    monkeypatch.setattr(dit_module, "_forward", forward)
    assert inpaint(model, scheduler, images, mask, InpaintConfig(steps=2)).shape == (2, 1, 16, 16)
