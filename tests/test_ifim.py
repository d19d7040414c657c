"""The iFIM engine against brute force (full float64 Jacobians of tiny models, d <= 256)."""

from __future__ import annotations

import pytest
import torch

from ifim_reference import TinyConvNet, brute_force_fisher, kl_divergence, top_eigen
from scripts.ifim import fisher_quadratic, ifim_decompose


def _model_and_input(n_classes, shape=(1, 1, 8, 8), seed=0, **kwargs):
    torch.manual_seed(seed)
    model = TinyConvNet(shape[1], n_classes, spatial_dims=len(shape) - 2, **kwargs)
    x = torch.randn(*shape, dtype=torch.float64)
    return model, x


def _check_against_brute_force(model, x, head, rho=0.9):
    result = ifim_decompose(model, x, rho=rho, head=head)
    fisher = brute_force_fisher(model, x, head)
    n_out = result.eigenvalues.shape[1]
    ref_evals, ref_evecs = top_eigen(fisher, n_out)
    scale = ref_evals[0]
    rank = int(result.rank[0])
    # Eigenvalues: the non-zero ones agree, and brute force has nothing left where the engine reports zeros.
    torch.testing.assert_close(result.eigenvalues[0, :rank], ref_evals[:rank], rtol=1e-9, atol=1e-12 * scale)
    assert torch.all(ref_evals[rank:].abs() <= 1e-10 * scale)
    # F rebuilt from the result, U diag(lambda) U^T, equals the brute-force F.
    u = result.eigenvectors[0].reshape(n_out, -1)
    rebuilt = u.T @ (result.eigenvalues[0, :, None] * u)
    torch.testing.assert_close(rebuilt, fisher, rtol=0, atol=1e-9 * scale)
    # The sensitive projector U_K U_K^T.
    k = int(result.k[0])
    projector = u[:k].T @ u[:k]
    torch.testing.assert_close(projector, ref_evecs[:, :k] @ ref_evecs[:, :k].T, rtol=0, atol=1e-8)
    torch.testing.assert_close(result.x_sens.reshape(-1), projector @ x.reshape(-1), rtol=0, atol=1e-10)
    return result


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_softmax_matches_brute_force(n_classes):
    model, x = _model_and_input(n_classes, logit_scale=3.0)
    result = _check_against_brute_force(model, x, "softmax", rho=0.95)
    assert int(result.rank[0]) == n_classes - 1  # generic model: rank C - 1 (Sec. III-A)
    assert result.eigenvalues[0, -1] == 0


@pytest.mark.parametrize("n_classes", [1, 3, 4])
def test_sigmoid_matches_brute_force(n_classes):
    model, x = _model_and_input(n_classes, seed=1, logit_scale=3.0)
    result = _check_against_brute_force(model, x, "sigmoid")
    assert int(result.rank[0]) == n_classes  # independent Bernoulli outputs: full rank C


def test_binary_case_is_eq_12():
    """C = 2: rank 1, lambda_1 = p_1 p_2 ||grad s||^2 and u_1 = +-grad s / ||grad s||."""
    model, x = _model_and_input(2, seed=3, logit_scale=2.0)
    result = ifim_decompose(model, x)
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    (grad_s,) = torch.autograd.grad(logits[0, 0] - logits[0, 1], xg)
    p = torch.softmax(logits.detach(), 1)[0]
    assert result.rank.tolist() == [1] and result.k.tolist() == [1]
    torch.testing.assert_close(result.eigenvalues[0, 0], p[0] * p[1] * grad_s.pow(2).sum(), rtol=1e-12, atol=0)
    u1 = result.eigenvectors[0, 0]
    direction = grad_s[0] / grad_s.norm()
    assert torch.allclose(u1, direction, atol=1e-12) or torch.allclose(u1, -direction, atol=1e-12)
    assert torch.all(result.eigenvectors[0, 1] == 0)


def test_kl_second_order_eq_18():
    """KL(p(x) || p(x + eps u_1)) / (eps^2 lambda_1 / 2) -> 1, and u_1 beats random unit directions."""
    model, x = _model_and_input(3, seed=4, logit_scale=3.0)
    result = ifim_decompose(model, x)
    u1, lam1 = result.eigenvectors[:, 0], result.eigenvalues[0, 0]
    p0 = torch.softmax(model(x), 1).detach()

    def kl_along(direction, eps):
        return kl_divergence(p0, torch.softmax(model(x + eps * direction), 1).detach())[0]

    errors = [abs(float(kl_along(u1, eps) / (0.5 * eps**2 * lam1)) - 1) for eps in (1e-1, 1e-2, 1e-3)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        random_dir = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        random_dir /= random_dir.norm()
        assert kl_along(random_dir, 1e-2) < kl_along(u1, 1e-2)


@pytest.mark.parametrize("head,n_classes", [("softmax", 2), ("softmax", 4), ("sigmoid", 3)])
def test_fisher_quadratic_matches_brute_force(head, n_classes):
    model, x = _model_and_input(n_classes, shape=(2, 2, 6, 6), seed=5, logit_scale=2.0)
    delta = torch.randn_like(x)
    values = fisher_quadratic(model, x, delta, head=head)
    expected = torch.stack([
        delta[i].reshape(-1) @ brute_force_fisher(model, x[i:i + 1], head) @ delta[i].reshape(-1) for i in range(2)
    ])
    torch.testing.assert_close(values, expected, rtol=1e-10, atol=0)
    # eq. 21: on the eigenvectors the quadratic form is the eigenvalue.
    result = ifim_decompose(model, x, head=head)
    torch.testing.assert_close(fisher_quadratic(model, x, result.eigenvectors[:, 0], head=head),
                               result.eigenvalues[:, 0], rtol=1e-9, atol=0)


def test_split_is_orthogonal_and_exact():
    model, x = _model_and_input(5, shape=(3, 1, 8, 8), seed=6, logit_scale=3.0)
    result = ifim_decompose(model, x, rho=0.8)
    torch.testing.assert_close(result.x_sens + result.x_comp, x, rtol=0, atol=1e-14)
    inner = (result.x_sens * result.x_comp).flatten(1).sum(1)
    assert torch.all(inner.abs() <= 1e-10 * x.flatten(1).pow(2).sum(1))
    # Eigenvectors are orthonormal where non-zero.
    for b in range(3):
        r = int(result.rank[b])
        u = result.eigenvectors[b].reshape(5, -1)
        torch.testing.assert_close(u[:r] @ u[:r].T, torch.eye(r, dtype=u.dtype), rtol=0, atol=1e-10)
        assert torch.all(u[r:] == 0)


def test_rho_selects_k():
    model, x = _model_and_input(5, shape=(4, 1, 8, 8), seed=7, logit_scale=3.0)
    full = ifim_decompose(model, x, rho=1.0)
    assert torch.equal(full.k, full.rank) and torch.all(full.rank == 4)
    one = ifim_decompose(model, x, rho=1e-6)
    assert torch.all(one.k == 1)
    # eq. 13 directly: k is the smallest K reaching the energy fraction.
    for rho in (0.5, 0.9, 0.99):
        result = ifim_decompose(model, x, rho=rho)
        fractions = result.eigenvalues.cumsum(1) / result.eigenvalues.sum(1, keepdim=True)
        for b in range(4):
            k = int(result.k[b])
            assert fractions[b, k - 1] >= rho and (k == 1 or fractions[b, k - 2] < rho)
    with pytest.raises(ValueError, match="rho"):
        ifim_decompose(model, x, rho=0.0)
    with pytest.raises(ValueError, match="rho"):
        ifim_decompose(model, x, rho=1.5)


def test_at_rho_splits_at_another_threshold_like_brute_force():
    model, x = _model_and_input(5, shape=(1, 1, 8, 8), seed=8, logit_scale=3.0)
    result = ifim_decompose(model, x, rho=0.5)
    ref_evals, ref_evecs = top_eigen(brute_force_fisher(model, x), 5)
    fractions = (ref_evals[:4].cumsum(0) / ref_evals[:4].sum()).tolist()
    for rho in (0.3, 0.7, 0.95, 1.0):
        k = next(i + 1 for i, f in enumerate(fractions) if f >= rho - 1e-12)  # eq. 13 on brute-force eigenvalues
        moved = result.at_rho(rho)
        assert int(moved.k[0]) == k
        projector = ref_evecs[:, :k] @ ref_evecs[:, :k].T
        torch.testing.assert_close(moved.x_sens.reshape(-1), projector @ x.reshape(-1), rtol=0, atol=1e-10)
        torch.testing.assert_close(moved.x_comp + moved.x_sens, x, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="rho"):
        result.at_rho(0.0)


def test_batch_equals_single_calls_and_restores_model_state():
    """BatchNorm left in train mode: the engine must use eval mode, so images do not interact."""
    model, x = _model_and_input(3, shape=(4, 2, 8, 8), seed=8, batch_norm=True, logit_scale=3.0)
    model.train()
    model.features[1].eval()  # a mixed-mode model must come back mixed, not all-train
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    head_grad_before = model.head.weight.grad.clone()
    batched = ifim_decompose(model, x)
    assert model.training and model.features[0].training and not model.features[1].training
    assert torch.equal(model.head.weight.grad, head_grad_before)
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())
    for b in range(4):
        single = ifim_decompose(model, x[b:b + 1])
        for name, value in single.to_dict().items():
            torch.testing.assert_close(getattr(batched, name)[b:b + 1], value, rtol=1e-10, atol=1e-13)


def test_works_under_no_grad_and_parameters_without_grad():
    model, x = _model_and_input(3, seed=9, logit_scale=3.0)
    reference = ifim_decompose(model, x)
    with torch.no_grad():
        inside = ifim_decompose(model, x)
    torch.testing.assert_close(inside.eigenvalues, reference.eigenvalues, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    assert not inside.x_sens.requires_grad and not inside.eigenvectors.requires_grad


def test_3d_multichannel_against_brute_force():
    model, x = _model_and_input(3, shape=(1, 2, 4, 4, 4), seed=10, logit_scale=3.0)
    result = _check_against_brute_force(model, x, "softmax")
    assert result.eigenvectors.shape == (1, 3, 2, 4, 4, 4) and result.x_sens.shape == x.shape


def test_float32_model_matches_float64():
    model, x = _model_and_input(3, shape=(2, 1, 8, 8), seed=11, logit_scale=3.0)
    exact = ifim_decompose(model, x)
    single = ifim_decompose(model.float(), x.float())
    assert single.x_sens.dtype == torch.float32 and single.eigenvalues.dtype == torch.float64
    torch.testing.assert_close(single.eigenvalues, exact.eigenvalues, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(single.x_sens.double(), exact.x_sens, rtol=0, atol=1e-4)


def test_underflowing_softmax_is_finite_and_rank_zero():
    """Logit gaps so large that float64 probabilities underflow: F is numerically zero, nothing is NaN or Inf."""
    model, x = _model_and_input(3, shape=(2, 1, 8, 8), seed=12, logit_scale=1e6)
    model = model.float()
    result = ifim_decompose(model, x.float())
    assert float(result.probs.max(1).values.min()) > 1 - 2 ** -24
    for name, value in result.to_dict().items():
        assert torch.isfinite(value.double()).all(), name
    assert torch.all(result.rank == 0) and torch.all(result.k == 0)
    assert torch.all(result.x_sens == 0) and torch.equal(result.x_comp, x.float())
    assert torch.all(result.eigenvalues == 0) and torch.all(result.eigenvectors == 0)


def _linear_model(weight: torch.Tensor, bias: torch.Tensor):
    return lambda z: z.flatten(1) @ weight.T + bias


@pytest.mark.parametrize("gap,expected_rank", [(12.0, 1), (25.0, 1), (300.0, 1), (400.0, 0)])
def test_confident_predictions_keep_exact_information_until_underflow(gap, expected_rank):
    """A float32 binary model within float32 rounding of certainty (gap 25: p_2 = 1.4e-11) keeps rank 1, an exact
    lambda_1 = p_1 p_2 ||w_1 - w_2||^2 and u_1 along w_1 - w_2; rank 0 only past the underflow floor (gap ~354)."""
    torch.manual_seed(13)
    weight = torch.randn(2, 16)
    x = torch.zeros(1, 1, 4, 4)  # logits are exactly the bias
    result = ifim_decompose(_linear_model(weight, torch.tensor([gap, 0.0])), x)
    assert int(result.rank[0]) == expected_rank
    for value in result.to_dict().values():
        assert torch.isfinite(value.double()).all()
    if expected_rank:
        diff = (weight[0] - weight[1]).double()
        p2 = torch.sigmoid(torch.tensor(-gap, dtype=torch.float64))
        torch.testing.assert_close(result.eigenvalues[0, 0], (1 - p2) * p2 * diff.pow(2).sum(), rtol=1e-6, atol=0)
        u1 = result.eigenvectors[0, 0].reshape(-1).double()
        assert abs(float(u1 @ diff / diff.norm())) == pytest.approx(1.0, abs=1e-6)
    else:
        assert torch.all(result.x_sens == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_is_numerical_relative_to_lambda_1(dtype):
    """C = 3 with two classes sharing one weight vector: the logit differences have one gradient, so rank 1."""
    torch.manual_seed(16)
    w = torch.randn(2, 16, dtype=dtype)
    weight = torch.stack([w[0], w[1], w[1]])
    model = _linear_model(weight, torch.tensor([0.3, -0.2, 0.1], dtype=dtype))
    result = ifim_decompose(model, torch.randn(2, 1, 4, 4, dtype=dtype))
    assert result.rank.tolist() == [1, 1] and torch.all(result.eigenvalues[:, 1:] == 0)


def test_constant_model_has_zero_fisher():
    result = ifim_decompose(lambda z: torch.ones(z.shape[0], 3), torch.randn(2, 1, 4, 4))
    assert torch.all(result.rank == 0) and torch.all(result.x_sens == 0)


@pytest.mark.parametrize("bad,match", [
    (torch.full((1, 1, 4, 4), float("nan")), "NaN"),
    (torch.zeros(4, 4), "shape"),
    (torch.zeros(0, 1, 4, 4), r"holds no image: shape \(0, 1, 4, 4\)"),
])
def test_bad_input_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        ifim_decompose(TinyConvNet(1, 2).float(), bad)


@pytest.mark.parametrize("settings,error,match", [
    ({"rtol": float("nan")}, ValueError, r"rtol must lie in \[0, 1\), got nan"),
    ({"rtol": 1.0}, ValueError, "rtol must lie"),
    ({"rtol": "1e-6"}, TypeError, "rtol must be a number"),
    ({"rho": "0.9"}, TypeError, r"rho must be a number in \(0, 1\], got '0.9' \(str\)"),
    ({"rho": float("nan")}, ValueError, "rho must lie"),
])
def test_bad_settings_are_refused_before_any_work(settings, error, match):
    model, x = _model_and_input(3, shape=(2, 1, 8, 8), seed=14, logit_scale=3.0)
    with pytest.raises(error, match=match):
        ifim_decompose(model, x, **settings)


def test_inference_mode_gives_the_exact_decomposition():
    """Under torch.inference_mode() autograd records nothing: the engine must not return a silent rank 0."""
    model, x = _model_and_input(3, shape=(2, 1, 8, 8), seed=15, logit_scale=3.0)
    reference = ifim_decompose(model, x)
    assert torch.all(reference.rank == 2)
    with torch.inference_mode():
        x_inference = x.clone()  # an inference tensor, as a caller's preprocessing would make
        inside = ifim_decompose(model, x_inference)
        quadratic = fisher_quadratic(model, x_inference, torch.ones_like(x_inference))
    for name, value in reference.to_dict().items():
        torch.testing.assert_close(getattr(inside, name), value, rtol=0, atol=0)
    torch.testing.assert_close(quadratic, fisher_quadratic(model, x, torch.ones_like(x)))


def test_bad_model_output_raises():
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        ifim_decompose(lambda z: z.sum(), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="sigmoid"):
        ifim_decompose(lambda z: z.flatten(1)[:, :1], torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="head"):
        ifim_decompose(lambda z: z.flatten(1)[:, :2], torch.zeros(1, 1, 4, 4), head="tanh")


@pytest.mark.parametrize("n_classes", [2, 4])
def test_confident_float64_model_keeps_relative_accuracy(n_classes):
    """Small probabilities (~1e-9) far from float64 rounding: eigenvalues stay accurate relative to themselves."""
    model, x = _model_and_input(n_classes, seed=14, logit_scale=3.0)
    with torch.no_grad():
        model.head.bias[0] += 7.0  # a logit gap of about 21: the other classes get p ~ 1e-9
    probs = torch.softmax(model(x), 1).detach()
    assert 1e-14 < float(1 - probs.max()) < 1e-6
    _check_against_brute_force(model, x, "softmax")


def test_result_indexing_keeps_the_batch_dimension():
    model, x = _model_and_input(3, shape=(3, 1, 8, 8), seed=15, logit_scale=3.0)
    result = ifim_decompose(model, x)
    for index, rows in ((1, [1]), (-1, [2]), (slice(0, 2), [0, 1])):
        part = result[index]
        for name, value in part.to_dict().items():
            assert torch.equal(value, getattr(result, name)[rows]), (index, name)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, None])
def test_chunks_give_the_whole_batch_result(chunk_size):
    """Images do not interact in eval mode: any chunking returns the batch's decomposition."""
    model, x = _model_and_input(3, shape=(5, 1, 8, 8), seed=16, logit_scale=3.0)
    whole = ifim_decompose(model, x, chunk_size=5)
    part = ifim_decompose(model, x, chunk_size=chunk_size)
    for name, value in whole.to_dict().items():
        torch.testing.assert_close(getattr(part, name), value, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="chunk_size must be a positive number"):
        ifim_decompose(model, x, chunk_size=0)


def test_auto_chunk_size_keeps_a_chunks_activations_within_the_cache(monkeypatch):
    import scripts.ifim as ifim_module
    from scripts.networks import ShallowCNN

    model = ShallowCNN(2, 1, 2, channels=(4, 8, 8))
    x = torch.zeros(64, 1, 32, 32)
    per_image = ifim_module.activation_bytes(model, x)
    # conv 4x32^2 + relu + pool 4x16^2 + conv 8x16^2 + relu + pool 8x8^2 + conv 8x8^2 + relu + pool + linear, float32
    assert per_image == 4 * (2 * 4 * 1024 + 4 * 256 + 2 * 8 * 256 + 8 * 64 + 2 * 8 * 64 + 8 + 2)
    monkeypatch.setattr(ifim_module, "last_level_cache_bytes", lambda: 10 * per_image + 1)
    assert ifim_module.auto_chunk_size(model, x) == 10
    assert ifim_module.auto_chunk_size(model, x[:4]) == 4
    monkeypatch.setattr(ifim_module, "last_level_cache_bytes", lambda: 1)
    assert ifim_module.auto_chunk_size(model, x) == 1
    # small volumes go two by two while two images' activations fit 3 x the cache, large ones one by one
    volume_model, volumes = ShallowCNN(3, 1, 2, channels=(4, 8, 8)), torch.zeros(4, 1, 8, 8, 8)
    per_volume = ifim_module.activation_bytes(volume_model, volumes)
    monkeypatch.setattr(ifim_module, "last_level_cache_bytes", lambda: per_volume)
    assert ifim_module.auto_chunk_size(volume_model, volumes) == ifim_module.MIN_3D_CHUNK == 2
    monkeypatch.setattr(ifim_module, "last_level_cache_bytes", lambda: per_volume // 2)
    assert ifim_module.auto_chunk_size(volume_model, volumes) == 1
    assert ifim_module.auto_chunk_size(lambda z: z.flatten(1)[:, :2], x) == 64  # activations unseen: one pass
