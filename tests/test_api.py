"""The library API: `verifier.BoundedModule(model, x).compute_bounds(...)`.

Sampled soundness for every norm and method (points on the ball's surface, inside it, and pushed
to the extremes of the bounds by projected gradient steps), exactness on linear models, gradients
(gradcheck in float64 for inputs and parameters), the functional forms of torch.fx traces against
the ONNX export of the same module, and the one-line errors.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import verifier
from verifier.bounds.core import BallPart, Interval
from verifier.errors import UserError

NORMS = (math.inf, 2, 1)
METHODS = ("ibp", "crown", "crown-ibp", "forward", "alpha-crown")


class Functional(nn.Module):
    """Written with function calls only, as users write models."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.weight = nn.Parameter(torch.randn(3 * 6 * 6, 8) * 0.2)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = F.relu(self.conv(x))
        y = torch.flatten(y, 1) @ self.weight
        z = x.view(x.size(0), -1)[:, :8]
        y = torch.cat([torch.relu(y), torch.sigmoid(z) * 2 - 1], dim=1)
        return self.head(y + 0.5 * y)


def _mlp(dtype=torch.float32, activation=nn.ReLU) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 12), activation(), nn.Linear(12, 8), activation(), nn.Linear(8, 3)).to(dtype)


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Tanh(),
                         nn.Flatten(), nn.Linear(16, 5))


def _sphere_points(center: torch.Tensor, eps: float, norm: float, count: int, generator, inside: bool):
    """`count` points per batch entry on the ball's surface (or uniform radius inside)."""
    shape = (count, *center.shape)
    if norm == math.inf:
        direction = torch.rand(shape, generator=generator) * 2 - 1
        if not inside:
            direction = direction.sign()
    elif norm == 2:
        direction = torch.randn(shape, generator=generator)
    else:  # a Laplace draw normalised in L1 is uniform on the L1 sphere
        direction = -torch.log(torch.rand(shape, generator=generator)) * torch.randn(shape, generator=generator).sign()
    flat = direction.reshape(count, center.shape[0], -1)
    if norm != math.inf:
        flat = flat / torch.linalg.vector_norm(flat, ord=norm, dim=-1, keepdim=True)
    if inside:
        flat = flat * torch.rand(count, center.shape[0], 1, generator=generator)
    return center.unsqueeze(0) + eps * flat.reshape(shape).to(center.dtype)


def _project(delta: torch.Tensor, eps: float, norm: float) -> torch.Tensor:
    """Onto the ball of radius eps around 0, per batch entry (L1: by scaling, which stays inside)."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == math.inf:
        return flat.clamp(-eps, eps).reshape(delta.shape)
    size = torch.linalg.vector_norm(flat, ord=norm, dim=-1, keepdim=True)
    return (flat * torch.clamp(eps / size.clamp(min=1e-30), max=1.0)).reshape(delta.shape)


def _pushed_points(model: nn.Module, center: torch.Tensor, eps: float, norm: float, generator, steps: int = 30):
    """Points driven towards the smallest and largest value of each output by projected steps."""
    outputs = model(center).reshape(center.shape[0], -1).shape[1]
    points = []
    for row in range(outputs):
        for sign in (1.0, -1.0):
            delta = _project(torch.randn(center.shape, generator=generator) * eps, eps, norm)
            for _ in range(steps):
                delta.requires_grad_(True)
                value = sign * model(center + delta).reshape(center.shape[0], -1)[:, row].sum()
                (gradient,) = torch.autograd.grad(value, delta)
                with torch.no_grad():
                    flat = gradient.reshape(gradient.shape[0], -1)
                    if norm == math.inf:
                        step = flat.sign()
                    elif norm == 2:
                        step = flat / flat.norm(dim=-1, keepdim=True).clamp(min=1e-30)
                    else:  # the L1 ball's steepest step moves the largest coordinate
                        step = torch.zeros_like(flat).scatter_(1, flat.abs().argmax(1, keepdim=True), 1.0) \
                            * flat.sign()
                    delta = _project(delta + 0.2 * eps * step.reshape(delta.shape), eps, norm)
            points.append(center + delta.detach())
    return torch.stack(points)


def _assert_inside(model, points, lower, upper, label):
    with torch.no_grad():
        values = model(points.reshape(-1, *points.shape[2:])).reshape(points.shape[0], points.shape[1], -1)
    slack = 1e-4 * (1 + values.abs())
    below = (values < lower.unsqueeze(0) - slack).any()
    above = (values > upper.unsqueeze(0) + slack).any()
    assert not bool(below) and not bool(above), f"{label}: a sampled output lies outside the bounds"


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [_mlp, lambda: _mlp(activation=nn.Sigmoid), _cnn, Functional],
                         ids=["relu-mlp", "sigmoid-mlp", "cnn", "functional"])
def test_sampled_outputs_lie_inside_the_bounds(make, method, norm):
    torch.manual_seed(1)
    model = make().eval()
    shape = (5,) if isinstance(model, nn.Sequential) and isinstance(model[0], nn.Linear) else (1, 8, 8)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, *shape, generator=generator)
    eps = {math.inf: 0.1, 2: 0.4, 1: 0.8}[norm]
    lower, upper = verifier.BoundedModule(model, x).compute_bounds(x, eps=eps, norm=norm, method=method)
    assert lower.shape == upper.shape == (2, model(x).reshape(2, -1).shape[1])
    for inside in (False, True):
        _assert_inside(model, _sphere_points(x, eps, norm, 300, generator, inside), lower, upper,
                       f"{method} L{norm} {'inside' if inside else 'surface'}")
    _assert_inside(model, _pushed_points(model, x, eps, norm, generator), lower, upper, f"{method} L{norm} pushed")


def test_the_dual_norm_is_what_makes_ball_bounds_sound(monkeypatch):
    """Mutation: concretising an L2 ball with the L-inf norm (the dual of L1, smaller than L2's own
    dual) is caught by the sampled check; a larger norm than the dual would only be loose."""
    torch.manual_seed(3)
    model = _mlp().eval()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, generator=generator)
    monkeypatch.setattr(BallPart, "dual_norm", property(lambda self: math.inf))
    lower, upper = verifier.BoundedModule(model, x).compute_bounds(x, eps=0.4, norm=2, method="crown")
    with pytest.raises(AssertionError, match="outside the bounds"):
        _assert_inside(model, _pushed_points(model, x, 0.4, 2, generator), lower, upper, "mutated")


@pytest.mark.parametrize("norm", [2, 1])
def test_linear_model_bounds_equal_the_closed_form(norm):
    """w.x + b +- eps ||w||_dual, for every method but IBP beyond the first layer (all exact here)."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    eps = 0.37
    weight = model[1].weight @ model[0].weight
    dual = {2: 2, 1: math.inf}[norm]
    center = model(x)
    radius = eps * torch.linalg.vector_norm(weight, ord=dual, dim=1)
    net = verifier.BoundedModule(model, x)
    for method in ("crown", "crown-ibp", "forward", "alpha-crown"):
        lower, upper = net.compute_bounds(x, eps=eps, norm=norm, method=method)
        assert torch.allclose(lower, center - radius, atol=1e-5), method
        assert torch.allclose(upper, center + radius, atol=1e-5), method


def test_ibp_bounds_the_first_layer_over_the_ball_itself():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(6, 4)).double()
    x = torch.randn(2, 6, dtype=torch.float64)
    lower, upper = verifier.BoundedModule(model, x).compute_bounds(x, eps=0.5, norm=2, method="ibp")
    radius = 0.5 * model[0].weight.norm(dim=1)
    assert torch.allclose(upper - lower, 2 * radius.expand(2, -1), atol=1e-9)


class _Given(nn.Module):
    """A ReLU network whose tensors are given (buffers), so that gradcheck can vary them."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__()
        for index, tensor in enumerate(tensors):
            self.register_buffer(f"t{index}", tensor)

    def forward(self, x):
        return F.linear(torch.relu(F.linear(x, self.t0, self.t1)), self.t2, self.t3)


@pytest.mark.parametrize("method", ["ibp", "crown", "crown-ibp", "forward"])
@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck_inputs_and_parameters(method, norm):
    generator = torch.Generator().manual_seed(7)
    tensors = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in ((6, 3), (6,), (2, 6), (2,))]
    x = torch.randn(2, 3, generator=generator, dtype=torch.float64)

    def bounds(point, *weights):
        net = verifier.BoundedModule(_Given(*weights), point.detach())
        return torch.cat(net.compute_bounds(point, eps=0.4, norm=norm, method=method), dim=1)

    inputs = [x, *tensors]
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(bounds, tuple(inputs), atol=1e-6)


def test_training_moves_the_bounds_and_gradients_reach_every_layer():
    torch.manual_seed(8)
    model = _mlp()
    x = torch.randn(4, 5)
    net = verifier.BoundedModule(model, x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    widths = []
    for _ in range(5):
        lower, upper = net.compute_bounds(x, eps=0.1, method="crown-ibp")
        loss = (upper - lower).mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
        optimizer.step()
        widths.append(float(loss.detach()))
    assert widths[-1] < widths[0]
    with torch.no_grad():  # the cached network follows the parameters' updates
        fresh = verifier.BoundedModule(model, x).compute_bounds(x, eps=0.1, method="crown")
        cached = net.compute_bounds(x, eps=0.1, method="crown")
    assert torch.equal(fresh[0], cached[0]) and torch.equal(fresh[1], cached[1])


def test_alpha_crown_search_leaves_parameter_gradients_alone():
    torch.manual_seed(9)
    model = _mlp()
    x = torch.randn(2, 5)
    net = verifier.BoundedModule(model, x)
    with torch.no_grad():
        net.compute_bounds(x, eps=0.3, method="alpha-crown")
    assert all(p.grad is None for p in model.parameters()) and all(p.requires_grad for p in model.parameters())
    lower, upper = net.compute_bounds(x, eps=0.3, method="alpha-crown")
    crown = net.compute_bounds(x, eps=0.3, method="crown")
    assert bool((lower >= crown[0] - 1e-5).all()) and bool((upper <= crown[1] + 1e-5).all())
    (upper - lower).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_specification_rows():
    torch.manual_seed(10)
    model = _mlp().eval()
    x = torch.randn(2, 5)
    net = verifier.BoundedModule(model, x)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]]).expand(2, 2, 3)
    lower, upper = net.compute_bounds(x, eps=0.2, method="crown", C=C)
    assert lower.shape == (2, 2)
    points = _sphere_points(x, 0.2, math.inf, 500, torch.Generator().manual_seed(1), inside=False)
    with torch.no_grad():
        values = torch.einsum("brk,pbk->pbr", C, model(points.reshape(-1, 5)).reshape(500, 2, 3))
    assert bool((values >= lower - 1e-5).all() and (values <= upper + 1e-5).all())
    plain_lower, plain_upper = net.compute_bounds(x, eps=0.2, method="crown")
    # the margin bound is tighter than the difference of the outputs' own bounds
    assert bool((lower[:, 0] >= plain_lower[:, 0] - plain_upper[:, 1] - 1e-6).all())


def test_intermediate_bounds_hold_every_node():
    torch.manual_seed(11)
    model = _mlp().eval()
    x = torch.randn(2, 5)
    net = verifier.BoundedModule(model, x)
    net.compute_bounds(x, eps=0.2, method="crown")
    bounds = net.intermediate_bounds()
    labels = list(bounds)
    assert labels[0] == "0: input" and any("Linear" in label for label in labels) and len(labels) == 6
    hidden = model[1](model[0](x))
    relu_lower, relu_upper = bounds[labels[2]]
    assert relu_lower.shape == (2, 1, 12)
    assert bool((hidden.unsqueeze(1) >= relu_lower - 1e-6).all() and (hidden.unsqueeze(1) <= relu_upper + 1e-6).all())


def test_box_region():
    model = _mlp().eval()
    lower_in, upper_in = -torch.ones(1, 5), torch.ones(1, 5)
    net = verifier.BoundedModule(model, lower_in)
    box = net.compute_bounds(lower=lower_in, upper=upper_in, method="crown")
    ball = net.compute_bounds(torch.zeros(1, 5), eps=1.0, method="crown")
    assert torch.allclose(box[0], ball[0]) and torch.allclose(box[1], ball[1])


def test_functional_module_is_bounded_like_its_onnx_export(tmp_path):
    torch.manual_seed(12)
    model = Functional().eval()
    x = torch.rand(2, 1, 8, 8)
    path = tmp_path / "functional.onnx"
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, x[:1], buffer, dynamo=False)
        except Exception as error:  # noqa: BLE001 - the exporter is optional for this comparison
            pytest.skip(f"torch.onnx.export is unavailable here: {error}")
    path.write_bytes(buffer.getvalue())
    traced, exported = verifier.BoundedModule(model, x), verifier.BoundedModule(str(path))
    ours = traced.compute_bounds(x, eps=0.05, method="crown")
    theirs = exported.compute_bounds(x, eps=0.05, method="crown")
    assert torch.allclose(ours[0], theirs[0], atol=1e-5) and torch.allclose(ours[1], theirs[1], atol=1e-5)
    labels = torch.tensor([1, 3])  # the fused loss wraps the converted ONNX modules as they are
    assert torch.allclose(traced.robust_loss(x, labels, eps=0.05), exported.robust_loss(x, labels, eps=0.05), atol=1e-5)


def test_unsupported_code_names_the_operation_and_the_line():
    class Sorting(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    with pytest.raises(UserError, match=r"cumsum.*test_api\.py:\d+"):
        verifier.BoundedModule(Sorting(), torch.rand(1, 4)).compute_bounds(torch.rand(1, 4), eps=0.1)


def test_untraceable_code_is_one_user_error():
    class Branching(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UserError, match="torch.fx cannot trace"):
        verifier.BoundedModule(Branching(), torch.rand(1, 4))


@pytest.mark.parametrize(("arguments", "message"), [
    ({"eps": 0.1, "norm": 3}, "norm 3"),
    ({"eps": 0.1, "method": "magic"}, "method 'magic'"),
    ({"eps": -0.1}, "negative"),
    ({}, "either x and eps"),
])
def test_bad_arguments_are_one_line_value_errors(arguments, message):
    net = verifier.BoundedModule(_mlp(), torch.rand(1, 5))
    with pytest.raises(ValueError, match=message):
        net.compute_bounds(torch.rand(1, 5), **arguments)


def test_wrong_input_shape_is_named():
    net = verifier.BoundedModule(_mlp(), torch.rand(1, 5))
    with pytest.raises(ValueError, match=r"x: expected a batch \[B, 5\]"):
        net.compute_bounds(torch.rand(1, 4), eps=0.1)


def test_the_readme_library_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Library", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    assert capsys.readouterr().out.strip() == "torch.Size([4, 10]) True"


class _Methods(nn.Module):
    """Method-call spellings, which the trace maps to the torch functions of the same name."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(5, 6) * 0.5)

    def forward(self, x):
        y = x.matmul(self.weight).relu().add(0.1)
        y = y.clamp(min=0.05).clamp(max=0.9).mul(2).sub(x.flatten(1)[:, :1]).neg()
        return torch.tanh(y).softmax(dim=1)


def test_method_calls_and_keyword_operands_are_bounded():
    torch.manual_seed(13)
    model = _Methods()
    x = torch.randn(2, 5)
    lower, upper = verifier.BoundedModule(model, x).compute_bounds(x, eps=0.2, method="crown")
    points = _sphere_points(x, 0.2, math.inf, 400, torch.Generator().manual_seed(2), inside=True)
    _assert_inside(model, points, lower, upper, "methods")
    assert bool((upper - lower < 1).all())  # softmax outputs: bounded inside [0, 1]


def _with_parameters(model: nn.Module, values: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(model, values, (x,))


def _weight_samples(model, names, radius, norm, count, generator):
    """`count` parameter draws inside each named parameter's ball (surface for half of them)."""
    draws = []
    for draw in range(count):
        values = {}
        for name in names:
            center = dict(model.named_parameters())[name].detach()
            point = _sphere_points(center.reshape(1, -1), radius, norm, 1, generator, inside=draw % 2 == 0)
            values[name] = point.reshape(center.shape)
        draws.append(values)
    return draws


@pytest.mark.parametrize("weight_norm", [math.inf, 2])
@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_perturbed_weights_sampled_soundness(weight_norm, eps):
    torch.manual_seed(14)
    model = _mlp().eval()
    generator = torch.Generator().manual_seed(15)
    x = torch.randn(2, 5, generator=generator)
    names = ["0.weight", "2.bias", "4.weight"]
    weights = dict.fromkeys(names, 0.05)
    net = verifier.BoundedModule(model, x)
    for method in ("ibp", "crown", "alpha-crown"):
        lower, upper = net.compute_bounds(x, eps=eps, weights=weights, weight_norm=weight_norm, method=method)
        with torch.no_grad():
            for values in _weight_samples(model, names, 0.05, weight_norm, 60, generator):
                points = _sphere_points(x, eps, math.inf, 5, generator, inside=False) if eps else x.unsqueeze(0)
                out = _with_parameters(model, values, points.reshape(-1, 5)).reshape(points.shape[0], 2, -1)
                assert bool((out >= lower - 1e-5).all() and (out <= upper + 1e-5).all()), method


def test_last_layer_weight_box_is_exact_for_a_fixed_input():
    """z = W h + b with W in a box of radius r: z_j ranges over W_j h +- r ||h||_1, exactly."""
    torch.manual_seed(16)
    model = _mlp(torch.float64).eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    lower, upper = verifier.BoundedModule(model, x).compute_bounds(x, eps=0.0, weights={"4.weight": 0.1})
    hidden = model[:4](x)
    radius = 0.1 * hidden.abs().sum(1, keepdim=True)
    assert torch.allclose(lower, model(x) - radius, atol=1e-6) and torch.allclose(upper, model(x) + radius, atol=1e-6)


def test_a_dropped_weight_region_is_caught(monkeypatch):
    """Mutation: the weights' region shrunk to their values (only the input varies) is caught."""
    torch.manual_seed(17)
    model = _mlp().eval()
    generator = torch.Generator().manual_seed(18)
    x = torch.randn(2, 5, generator=generator)
    joint = verifier.api._joint

    def without_weights(regions):
        return joint([regions[0]] + [Interval(r.center, r.center) for r in regions[1:]])

    monkeypatch.setattr(verifier.api, "_joint", without_weights)
    lower, upper = verifier.BoundedModule(model, x).compute_bounds(x, eps=0.0, weights={"4.weight": 0.2})
    with torch.no_grad():
        outputs = torch.stack([_with_parameters(model, values, x)
                               for values in _weight_samples(model, ["4.weight"], 0.2, math.inf, 40, generator)])
    assert not bool((outputs >= lower - 1e-5).all() and (outputs <= upper + 1e-5).all())


def test_weight_perturbation_errors():
    net = verifier.BoundedModule(_cnn(), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="'nope' is not a parameter"):
        net.compute_bounds(torch.rand(1, 1, 8, 8), eps=0.0, weights={"nope": 0.1})
    with pytest.raises(UserError, match="perturbed convolution weight"):
        net.compute_bounds(torch.rand(1, 1, 8, 8), eps=0.0, weights={"0.weight": 0.1})


@pytest.mark.parametrize("method", METHODS)
def test_fused_loss_bounds_the_cross_entropy(method):
    torch.manual_seed(19)
    model = _mlp().eval()
    generator = torch.Generator().manual_seed(20)
    x = torch.randn(3, 5, generator=generator)
    labels = torch.tensor([0, 2, 1])
    net = verifier.BoundedModule(model, x)
    bound = net.robust_loss(x, labels, eps=0.1, method=method)
    assert bound.shape == (3,)
    points = torch.cat([_sphere_points(x, 0.1, math.inf, 300, generator, inside=False),
                        _pushed_points(model, x, 0.1, math.inf, generator)])
    with torch.no_grad():
        losses = F.cross_entropy(model(points.reshape(-1, 5)), labels.repeat(points.shape[0]), reduction="none")
    assert bool((losses.reshape(points.shape[0], 3) <= bound + 1e-5).all())
    clean = F.cross_entropy(model(x), labels, reduction="none")
    assert bool((bound >= clean - 1e-6).all())
    if method != "alpha-crown":
        bound.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("norm", NORMS)
def test_verify_bounds_over_a_ball_around_the_box_centre_is_the_api_bound(norm):
    from verifier.output_bounds import output_bounds

    examples = Path(__file__).resolve().parents[1] / "examples"
    model, prop = str(examples / "classifier.onnx"), str(examples / "classifier_radius_0.02.vnnlib")
    report = output_bounds(model, prop, "crown", eps=0.1, norm=norm)
    case = report["cases"][0]
    centre = (torch.tensor(case["input_lower"]) + torch.tensor(case["input_upper"])) / 2
    lower, upper = verifier.BoundedModule(model).compute_bounds(centre.float().unsqueeze(0), eps=0.1, norm=norm)
    assert torch.allclose(lower[0].double(), torch.tensor(case["lower"], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(upper[0].double(), torch.tensor(case["upper"], dtype=torch.float64), atol=1e-6)
    box = output_bounds(model, prop, "crown", eps=0.1)["cases"][0]
    if norm != math.inf:  # a ball of the same radius lies inside the L-inf one
        assert all(low >= box_low - 1e-6 for low, box_low in zip(case["lower"], box["lower"]))


def test_fused_loss_over_perturbed_weights():
    torch.manual_seed(21)
    model = _mlp().eval()
    generator = torch.Generator().manual_seed(22)
    x = torch.randn(3, 5, generator=generator)
    labels = torch.tensor([2, 0, 1])
    net = verifier.BoundedModule(model, x)
    bound = net.robust_loss(x, labels, eps=0.0, weights={"4.weight": 0.05, "4.bias": 0.05}, method="crown")
    assert bool((bound > net.robust_loss(x, labels, eps=0.0, method="crown")).all())
    with torch.no_grad():
        for values in _weight_samples(model, ["4.weight", "4.bias"], 0.05, math.inf, 100, generator):
            losses = F.cross_entropy(_with_parameters(model, values, x), labels, reduction="none")
            assert bool((losses <= bound + 1e-5).all())


SHARED_BALL_MODELS = ("ACASXU_run2a_1_1_batch_2000", "mnist-net_256x2", "cifar_base_kw")


def _shared_models() -> list:
    from tests.conftest import model_pairs, shared_or_skip

    pairs = [(model, prop) for model, prop in model_pairs(shared_or_skip)
             if any(name in Path(model).name for name in SHARED_BALL_MODELS)]
    return pairs or [pytest.param(None, None, marks=pytest.mark.skip(reason="shared benchmarks not found"))]


@pytest.mark.parametrize("norm", [2, 1])
@pytest.mark.parametrize(("model_path", "prop_path"), _shared_models(),
                         ids=lambda value: Path(value).stem if value else "absent")
def test_shared_models_ball_bounds_hold_sampled_and_pushed_points(model_path, prop_path, norm):
    """L2 and L1 balls around the centre of each model's first property box, on shared models."""
    from verifier.load import load_model
    from verifier.vnnlib import parse_file

    loaded = load_model(str(model_path))
    net = verifier.BoundedModule(str(model_path))
    case = parse_file(prop_path).cases[0]
    centre = torch.from_numpy((case.lower + case.upper) / 2).float().reshape(1, *net.input_shape)
    radius = torch.from_numpy((case.upper - case.lower) / 2).float()
    eps = float(radius.norm(p=norm)) / 2
    generator = torch.Generator().manual_seed(23)

    def model(points):
        return loaded.module(points.reshape(-1, *loaded.input_shape[1:])).reshape(points.shape[0], -1)

    methods = ("ibp", "crown", "forward") if centre[0].numel() <= 1000 else ("ibp", "crown")
    for method in methods:
        lower, upper = net.compute_bounds(centre, eps=eps, norm=norm, method=method)
        points = torch.cat([_sphere_points(centre, eps, norm, 40, generator, inside=False),
                            _pushed_points(model, centre, eps, norm, generator, steps=10)[:6]])
        _assert_inside(model, points, lower, upper, f"{Path(model_path).stem} {method} L{norm}")


@pytest.mark.parametrize("norm", [2, 1])
@pytest.mark.parametrize("family", ["dense", "conv", "shape", "products", "residual"])
def test_random_graph_ball_bounds_hold_sampled_and_pushed_points(tmp_path, family, norm):
    """The random ONNX graph families of the box tests, over L2 and L1 balls, for every method."""
    import numpy as np
    import onnx

    from tests.graphs import FAMILIES
    from verifier.graph import build_network
    from verifier.load import load_model

    path = tmp_path / f"{family}.onnx"
    onnx.save(FAMILIES[family](np.random.default_rng(24)), path)
    loaded = load_model(str(path))
    net = verifier.BoundedModule(str(path))
    generator = torch.Generator().manual_seed(25)
    centre = torch.randn(2, *net.input_shape, generator=generator)
    eps = 0.3 * math.sqrt(centre[0].numel()) if norm == 2 else 0.3 * centre[0].numel() / 2

    network = build_network(loaded)  # runs on batches, which the converted module of some graphs does not

    def model(points):
        return network(points.reshape(-1, *loaded.input_shape)).reshape(points.shape[0], -1)

    points = torch.cat([_sphere_points(centre, eps, norm, 60, generator, inside=False),
                        _sphere_points(centre, eps, norm, 60, generator, inside=True),
                        _pushed_points(model, centre, eps, norm, generator, steps=10)[:8]])
    for method in METHODS:
        lower, upper = net.compute_bounds(centre, eps=eps, norm=norm, method=method)
        _assert_inside(model, points, lower, upper, f"{family} {method} L{norm}")


def _pushed_weights(model: nn.Module, names: list[str], radius: float, x: torch.Tensor, generator,
                    steps: int = 20) -> list[dict[str, torch.Tensor]]:
    """Weights driven by signed steps inside their boxes towards each output's extremes."""
    centre = {name: tensor.detach() for name, tensor in model.named_parameters() if name in names}
    draws = []
    for row in range(model(x).shape[1]):
        for sign in (1.0, -1.0):
            offsets = {name: (torch.rand(c.shape, generator=generator) * 2 - 1) * radius for name, c in centre.items()}
            for _ in range(steps):
                for value in offsets.values():
                    value.requires_grad_(True)
                output = torch.func.functional_call(model, {n: centre[n] + offsets[n] for n in names}, (x,))
                grads = torch.autograd.grad(sign * output[:, row].sum(), list(offsets.values()))
                offsets = {n: (offsets[n].detach() + 0.3 * radius * g.sign()).clamp(-radius, radius)
                           for n, g in zip(offsets, grads)}
            draws.append({n: centre[n] + offsets[n] for n in names})
    return draws


def test_perturbed_weights_hold_pushed_weights():
    torch.manual_seed(26)
    model = _mlp().eval()
    x = torch.randn(1, 5, generator=torch.Generator().manual_seed(27))
    names = ["0.weight", "2.weight", "4.bias"]
    net = verifier.BoundedModule(model, x)
    draws = _pushed_weights(model, names, 0.05, x, torch.Generator().manual_seed(28))
    for method in ("ibp", "crown", "forward", "alpha-crown"):
        lower, upper = net.compute_bounds(x, eps=0.0, weights=dict.fromkeys(names, 0.05), method=method)
        with torch.no_grad():
            outputs = torch.stack([torch.func.functional_call(model, values, (x,)) for values in draws])
        assert bool((outputs >= lower - 1e-5).all() and (outputs <= upper + 1e-5).all()), method
        # the pushed weights reach close to the bounds: they are not far inside
        assert bool(((outputs.amax(0) - upper).abs() < upper - lower).all())


def test_parameters_of_layers_that_cannot_vary_them_are_refused():
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.rand(1, 3)
    with pytest.raises(UserError, match="perturbed batch norm"):
        verifier.BoundedModule(bn, x).compute_bounds(x, eps=0.0, weights={"1.weight": 1.0})
    transposed = nn.Sequential(nn.ConvTranspose2d(1, 1, 2), nn.Flatten()).eval()
    image = torch.rand(1, 1, 2, 2)
    with pytest.raises(UserError, match="perturbed transposed convolution"):
        verifier.BoundedModule(transposed, image).compute_bounds(image, eps=0.0, weights={"0.weight": 1.0})


def test_a_subclass_with_its_own_forward_is_traced_into():
    class ClippedLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x.clamp(-1, 1))

    torch.manual_seed(29)
    model = nn.Sequential(ClippedLinear(2, 2)).eval()
    x = torch.full((1, 2), 2.5)
    lower, upper = verifier.BoundedModule(model, x).compute_bounds(x, eps=0.5)
    points = _sphere_points(x, 0.5, math.inf, 200, torch.Generator().manual_seed(3), inside=True)
    _assert_inside(model, points, lower, upper, "subclass")


def test_bounds_follow_replaced_parameters_and_data():
    torch.manual_seed(30)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.rand(1, 3)
    net = verifier.BoundedModule(model, x)
    with torch.no_grad():
        net.compute_bounds(x, eps=0.1)
        model[0].weight.data = model[0].weight.data * 10  # the version counter does not move
        model[2].weight = nn.Parameter(torch.randn(2, 3))  # a new tensor at version 0
        fresh = verifier.BoundedModule(model, x).compute_bounds(x, eps=0.1)
        assert all(torch.equal(a, b) for a, b in zip(net.compute_bounds(x, eps=0.1), fresh))


def test_unbounded_values_give_infinite_bounds_not_nan():
    class LogOfRelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.second(torch.log(torch.relu(self.first(x))))

    torch.manual_seed(31)
    x = torch.zeros(1, 2)
    net = verifier.BoundedModule(LogOfRelu(), x)
    for method in METHODS:
        lower, upper = net.compute_bounds(x, eps=1.0, method=method)
        assert not bool(torch.isnan(lower).any() or torch.isnan(upper).any()), method


def test_per_element_radii_are_refused():
    net = verifier.BoundedModule(_mlp(), torch.rand(1, 5))
    with pytest.raises(ValueError, match=r"one per batch entry \[B=1\]"):
        net.compute_bounds(torch.rand(1, 5), eps=torch.full((1, 5), 0.1))


def test_variadic_methods_and_keyword_only_operands():
    class Moves(nn.Module):
        def forward(self, x):
            return x.reshape(-1, 2, 2).permute(0, 2, 1).flip(1).reshape(1, 4)

    x = torch.rand(1, 4)
    lower, upper = verifier.BoundedModule(Moves(), x).compute_bounds(x, eps=0.1)
    assert torch.allclose(lower, Moves()(x) - 0.1) and torch.allclose(upper, Moves()(x) + 0.1)

    class Scaled(nn.Module):
        def forward(self, x):
            return torch.add(x, x, alpha=2)

    with pytest.raises(UserError, match="add with alpha=2"):
        verifier.BoundedModule(Scaled(), x).compute_bounds(x, eps=0.1)


def test_fused_loss_stays_finite_where_the_exponential_overflows():
    """Differences of logits above 88 overflow float32's exp: the bound falls back to max + log K."""
    torch.manual_seed(32)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    with torch.no_grad():
        model[2].weight.mul_(60.0)
    x = torch.randn(2, 4)
    labels = torch.tensor([0, 3])
    bound = verifier.BoundedModule(model, x).robust_loss(x, labels, eps=1.0, method="crown")
    assert bool(torch.isfinite(bound).all())
    points = _sphere_points(x, 1.0, math.inf, 400, torch.Generator().manual_seed(4), inside=True)
    with torch.no_grad():
        losses = F.cross_entropy(model(points.reshape(-1, 4)), labels.repeat(400), reduction="none")
    assert bool((losses.reshape(400, 2) <= bound).all())
