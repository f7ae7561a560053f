"""Digit evaluation (benchmarks/metrics/digit_checks.py): the classifier reads real digits, KID separates
real from noise and is ~0 between samples of one distribution."""
import time

import pytest
import torch

from benchmarks.metrics.digit_checks import FEATURES, DigitClassifier, kid, score_samples, train_classifier
from modalities.digits import load_split, to_tensor


@pytest.fixture(scope="module")
def trained():
    """(classifier, test accuracy, seconds): trained once for the module, seed 0, CPU."""
    start = time.perf_counter()
    model, acc = train_classifier(seed=0)
    return model, acc, time.perf_counter() - start


@pytest.fixture(scope="module")
def real_features(trained):
    """Penultimate features (N, F) of the real train and test splits."""
    model = trained[0]
    with torch.no_grad():
        return {s: model.features(to_tensor(load_split(s)[0])) for s in ("train", "test")}


def test_classifier_shapes(seed):
    model = DigitClassifier().eval()
    x = torch.rand(5, 1, 8, 8)
    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, FEATURES)


def test_classifier_reads_real_test_digits(trained):
    model, acc, seconds = trained
    assert acc >= 0.97
    assert not model.training
    print(f"digit classifier: test accuracy {acc:.4f} in {seconds:.1f} s")


def test_training_leaves_global_rng_alone(seed):
    state = torch.get_rng_state()
    train_classifier(seed=0, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_kid_real_vs_real_is_much_smaller_than_real_vs_noise(trained, real_features, seed):
    model = trained[0]
    test, train = real_features["test"], real_features["train"]
    with torch.no_grad():
        noise = model.features(torch.rand(len(test), 1, 8, 8))
    real_mean, real_std = kid(test, train)
    noise_mean, _ = kid(test, noise)
    print(f"KID real test vs train {real_mean:.3f} +- {real_std:.3f}; vs uniform noise {noise_mean:.3f}")
    assert noise_mean > 0
    assert abs(real_mean) < noise_mean / 10


def test_kid_of_identical_sets_is_zero_within_noise(trained, real_features):
    test = real_features["test"]
    mean, std = kid(test, test)
    assert abs(mean) <= 2 * std
    noise_mean, _ = kid(test, trained[0].features(torch.rand(len(test), 1, 8, 8)).detach())
    assert abs(mean) < noise_mean / 10


def test_kid_on_gaussians(seed):
    a, b = torch.randn(400, 16), torch.randn(400, 16)
    same_mean, same_std = kid(a, b, seed=1)
    shifted_mean, _ = kid(a, b + 1.0, seed=1)
    assert abs(same_mean) <= 2 * same_std
    assert shifted_mean > 10 * max(abs(same_mean), same_std)
    assert kid(a, b, seed=1) == (same_mean, same_std)             # seeded subsets
    mean, std = kid(a[:30], b, subset_size=100)                    # subsets clipped to 30 rows
    assert abs(mean) < shifted_mean


def test_kid_rejects_bad_features():
    with pytest.raises(ValueError, match="feature dims differ"):
        kid(torch.zeros(10, 8), torch.zeros(10, 9))
    with pytest.raises(ValueError, match="2-D"):
        kid(torch.zeros(10), torch.zeros(10))
    with pytest.raises(ValueError, match="at least 2"):
        kid(torch.zeros(1, 8), torch.zeros(10, 8))


def test_score_samples(trained, seed):
    model, acc, _ = trained
    real_test, labels = load_split("test")
    real = score_samples(to_tensor(real_test), torch.from_numpy(labels), model, to_tensor(real_test))
    assert set(real) == {"accuracy", "kid_mean", "kid_std"}
    assert real["accuracy"] == pytest.approx(acc)
    noise = score_samples(torch.rand(len(labels), 1, 8, 8), labels, model, real_test)  # uint8 real ok
    assert noise["accuracy"] < 0.4
    assert abs(real["kid_mean"]) < noise["kid_mean"] / 10
    with pytest.raises(ValueError, match="expected images"):
        score_samples(torch.rand(4, 8, 8), labels[:4], model, real_test)
