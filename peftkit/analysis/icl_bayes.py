"""In-context learning as Bayesian model averaging, on Gaussian linear tasks (``peftkit icl-bayes``).

The setting of Zhang, Zhang, Yang & Wang (2023, "What and How does In-Context Learning Learn?
Bayesian Model Averaging, Parameterization, and Generalization"), as run by Garg et al. (2022):
a task is z ~ N(0, τ²I_d); a prompt is T pairs (x_t, y_t) with x_t ~ N(0, I_d) and
y_t = zᵀx_t + ε_t, ε_t ~ N(0, σ²). The Bayes predictor of y_{t+1} from the first t pairs is
the posterior mean (the model average over tasks)

    ŷ = x_{t+1}ᵀ (X_tᵀX_t + σ²/τ² I)⁻¹ X_tᵀ y_t,

whose excess error over the noise σ² falls like O(d/t) once t > d. The paper's claim is that a
well-pretrained transformer predicts in context like this average, up to a pretraining error.

The experiment: pretrain a small GPT-2 (transformers ``GPT2Model`` fed ``inputs_embeds``) on
such prompts with peftkit's own training loop, then measure on fresh prompts, for every
prefix length t = 0..T-1: the transformer's squared error, the posterior mean's, least
squares' (minimum-norm below t = d), and the transformer's squared distance from the
posterior mean; then the same on mis-specified prompts (noise or prior different from
pretraining), where the transformer should track the posterior under its *pretraining*
prior, not the prompts' true one. The decay of the excess error is fitted as a·t^(-b) + c:
for the posterior mean b ≈ 1 and c ≈ 0; c is the transformer's pretraining error.

Token layout: token t = [x_{t-1}, y_{t-1}, 1, x_t] in R^(2d+2) (the first token has no pair:
[0, 0, 0, x_0]), so under causal attention the prediction read at token t has seen exactly the
pairs 0..t-1 and its query x_t, and one forward gives a prediction at every prefix length.
Garg et al. give x and y tokens of their own (x_1, y_1, x_2, y_2, …); a model must then first
learn to pair each y with the x before it, a plateau they escape with a curriculum over
hundreds of thousands of steps. Carrying the pair in one token skips that plateau, which a
2-core CPU cannot afford; what the model must still learn in context (average over tasks
given the pairs) is the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peftkit.errors import PeftkitError
from peftkit.files import atomic_write, atomic_write_json, atomic_write_text, ensure_output_dir

MODEL_FILE, MODEL_CONFIG_FILE = "icl_bayes_model.safetensors", "icl_bayes_config.json"
RESULTS_JSON, RESULTS_MD, RESULTS_PLOT = "icl_bayes.json", "icl_bayes.md", "icl_bayes.png"


# -- tasks -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearTaskPrior:
    """The distribution of prompts: z ~ N(0, prior_std² I_dim), x ~ N(0, I), y = zᵀx + N(0, noise_std²)."""

    dim: int = 5
    """d, the dimension of x and of the task vector z."""
    num_points: int = 20
    """T, the (x, y) pairs per prompt."""
    noise_std: float = 0.5
    """σ, the standard deviation of the label noise ε."""
    prior_std: float = 1.0
    """τ, the standard deviation of each coordinate of the task vector z."""

    def check(self) -> None:
        problems = []
        if self.dim < 1 or self.num_points < 1:
            problems.append(f"dim and num_points must be at least 1 (got {self.dim}, {self.num_points})")
        if self.noise_std < 0 or not self.prior_std > 0:
            problems.append(f"noise_std must be ≥ 0 and prior_std > 0 (got {self.noise_std}, {self.prior_std})")
        if problems:
            raise PeftkitError("bad Gaussian linear task settings: " + "; ".join(problems) + ".")


def sample_prompts(prior: LinearTaskPrior, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` prompts: xs (count, T, d) and ys (count, T), float32, drawn from ``generator``."""
    tasks = torch.randn(count, prior.dim, generator=generator) * prior.prior_std
    xs = torch.randn(count, prior.num_points, prior.dim, generator=generator)
    noise = torch.randn(count, prior.num_points, generator=generator) * prior.noise_std
    ys = torch.einsum("ntd,nd->nt", xs, tasks) + noise
    return xs, ys


class LinearPromptDataset(torch.utils.data.Dataset):
    """``size`` prompts, prompt i drawn from a generator seeded by (seed, i): the same prompt
    whatever the order or process that asks for it (the training loop's resume relies on it)."""

    def __init__(self, prior: LinearTaskPrior, size: int, seed: int):
        self.prior, self.size, self.seed = prior, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        state = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
        xs, ys = sample_prompts(self.prior, 1, torch.Generator().manual_seed(state))
        return {"xs": xs[0], "labels": ys[0]}


# -- the reference predictors (float64) -----------------------------------------------------------


def posterior_mean_predictions(xs: torch.Tensor, ys: torch.Tensor, noise_std: float, prior_std: float) -> torch.Tensor:
    """The Bayes predictor at every prefix: out[:, t] = x_tᵀ(X_<tᵀX_<t + σ²/τ² I)⁻¹X_<tᵀy_<t.

    xs (N, T, d), ys (N, T) → (N, T) in float64; out[:, 0] = 0 (the prior mean). With σ = 0 the
    posterior mean is the minimum-norm interpolant (the ridge limit), computed with a pseudo-inverse.
    """
    xs, ys = xs.double(), ys.double()
    count, length, dim = xs.shape
    out = torch.zeros(count, length, dtype=torch.float64, device=xs.device)
    ridge = (noise_std / prior_std) ** 2
    eye = torch.eye(dim, dtype=torch.float64, device=xs.device)
    for t in range(1, length):
        context_x, context_y = xs[:, :t], ys[:, :t]
        if ridge > 0:
            gram = context_x.transpose(1, 2) @ context_x + ridge * eye
            weights = torch.linalg.solve(gram, (context_x.transpose(1, 2) @ context_y.unsqueeze(-1))).squeeze(-1)
        else:
            weights = (torch.linalg.pinv(context_x) @ context_y.unsqueeze(-1)).squeeze(-1)
        out[:, t] = (xs[:, t] * weights).sum(-1)
    return out


def least_squares_predictions(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Ordinary least squares at every prefix (minimum-norm while t ≤ d): (N, T) float64, out[:, 0] = 0."""
    return posterior_mean_predictions(xs, ys, noise_std=0.0, prior_std=1.0)


# -- the transformer -------------------------------------------------------------------------------


@dataclasses.dataclass
class InContextOutput:
    """What the training loop reads: ``loss`` (mean squared error) and ``logits`` (the predictions, (N, T))."""

    loss: torch.Tensor | None
    logits: torch.Tensor


class InContextRegressor(nn.Module):
    """A GPT-2 (``transformers.GPT2Model``) reading a prompt as T tokens [x_{t-1}, y_{t-1}, 1, x_t].

    ``forward(xs (N, T, d), labels (N, T) | None)`` → ``InContextOutput`` with predictions
    (N, T): prediction t is read at token t, so it has seen exactly the t pairs before it.
    """

    def __init__(self, dim: int, num_points: int, hidden_size: int = 64, num_layers: int = 4, num_heads: int = 4):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        if hidden_size % num_heads:
            raise PeftkitError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}; pick sizes that divide.")
        self.dim, self.num_points = dim, num_points
        self.settings = {"dim": dim, "num_points": num_points, "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads}
        # No dropout: the data are infinite (a fresh prompt per example), nothing to regularise.
        config = GPT2Config(
            n_positions=num_points, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, vocab_size=1, bos_token_id=0, eos_token_id=0,
        )
        self.read_in = nn.Linear(2 * dim + 2, hidden_size)
        self.backbone = GPT2Model(config)
        self.read_out = nn.Linear(hidden_size, 1)

    def tokens(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(N, T, d), (N, T) → (N, T, 2d + 2): the previous pair, a flag that it exists, the query."""
        count, length, dim = xs.shape
        previous_pair = torch.cat([xs, ys.unsqueeze(-1).to(xs.dtype), xs.new_ones(count, length, 1)], dim=-1)
        previous_pair = torch.cat([previous_pair.new_zeros(count, 1, dim + 2), previous_pair[:, :-1]], dim=1)
        return torch.cat([previous_pair, xs], dim=-1)

    def forward(self, xs: torch.Tensor, labels: torch.Tensor | None = None) -> InContextOutput:
        if xs.ndim != 3 or xs.shape[-1] != self.dim or xs.shape[1] > self.num_points:
            raise PeftkitError(
                f"expected prompts xs of shape (N, ≤{self.num_points}, {self.dim}), got {tuple(xs.shape)}; "
                "use the dimension and prompt length the model was pretrained with."
            )
        ys = labels if labels is not None else xs.new_zeros(xs.shape[:2])  # the last y is never read
        hidden = self.backbone(inputs_embeds=self.read_in(self.tokens(xs, ys))).last_hidden_state
        predictions = self.read_out(hidden).squeeze(-1)
        loss = nn.functional.mse_loss(predictions, labels.to(predictions.dtype)) if labels is not None else None
        return InContextOutput(loss=loss, logits=predictions)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        tensors = {name: value.detach().cpu().contiguous() for name, value in self.state_dict().items()}
        atomic_write(directory / MODEL_FILE, lambda tmp: save_file(tensors, tmp))
        atomic_write_json(directory / MODEL_CONFIG_FILE, self.settings)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "InContextRegressor":
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / MODEL_FILE).is_file() or not (directory / MODEL_CONFIG_FILE).is_file():
            raise PeftkitError(f"{directory} holds no {MODEL_FILE} + {MODEL_CONFIG_FILE}; point at the model directory `peftkit icl-bayes` wrote.")
        model = cls(**json.loads((directory / MODEL_CONFIG_FILE).read_text(encoding="utf-8")))
        model.load_state_dict(load_file(directory / MODEL_FILE))
        return model.eval()


@torch.no_grad()
def transformer_predictions(model: InContextRegressor, xs: torch.Tensor, ys: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's in-context predictions (N, T) in float64 (on the model's device, returned on CPU)."""
    parameter = next(model.parameters())
    model.eval()
    chunks = []
    for start in range(0, len(xs), batch_size):
        batch_x = xs[start:start + batch_size].to(parameter.device, parameter.dtype)
        batch_y = ys[start:start + batch_size].to(parameter.device, parameter.dtype)
        chunks.append(model(batch_x, batch_y).logits.double().cpu())
    return torch.cat(chunks)


# -- measuring ----------------------------------------------------------------------------------------


def _mean_and_error(squared: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-prefix mean over prompts and its standard error (squared: (N, T))."""
    return squared.mean(0).tolist(), (squared.std(0) / math.sqrt(squared.shape[0])).tolist()


def in_context_errors(model: InContextRegressor, prompt_prior: LinearTaskPrior, pretraining_prior: LinearTaskPrior,
                      num_prompts: int, seed: int) -> dict[str, Any]:
    """Squared errors against the number of in-context examples t = 0..T-1 on ``num_prompts`` fresh prompts.

    Reported per t (mean and standard error): the transformer; the posterior mean under the
    pretraining prior (what a perfect pretrained model computes); under the prompts' own prior
    (the Bayes-optimal predictor for these prompts); least squares; and the transformer's
    squared distance from the pretraining posterior mean.
    """
    xs, ys = sample_prompts(prompt_prior, num_prompts, torch.Generator().manual_seed(seed))
    targets = ys.double()
    predictions = {
        "transformer": transformer_predictions(model, xs, ys),
        "posterior_mean": posterior_mean_predictions(xs, ys, pretraining_prior.noise_std, pretraining_prior.prior_std),
        "posterior_mean_true_prior": posterior_mean_predictions(xs, ys, prompt_prior.noise_std, prompt_prior.prior_std),
        "least_squares": least_squares_predictions(xs, ys),
    }
    result: dict[str, Any] = {"prompt_prior": dataclasses.asdict(prompt_prior), "num_prompts": num_prompts, "t": list(range(prompt_prior.num_points))}
    for name, predicted in predictions.items():
        result[name], result[f"{name}_stderr"] = _mean_and_error((predicted - targets) ** 2)
    result["distance_to_posterior_mean"], result["distance_to_posterior_mean_stderr"] = _mean_and_error(
        (predictions["transformer"] - predictions["posterior_mean"]) ** 2
    )
    return result


def fit_power_law(t: np.ndarray, excess: np.ndarray) -> dict[str, float] | None:
    """Least-squares fit of excess(t) ≈ a·t^(-b) + c (scipy.optimize.curve_fit); None if it fails."""
    from scipy.optimize import curve_fit

    t, excess = np.asarray(t, dtype=float), np.asarray(excess, dtype=float)
    if len(t) < 4:  # three parameters need more points than that to mean anything
        return None
    try:
        (a, b, c), _ = curve_fit(lambda x, a, b, c: a * x ** (-b) + c, t, excess, p0=(excess[0] * t[0], 1.0, max(excess[-1], 0.0) / 2), maxfev=20000)
    except (RuntimeError, ValueError, TypeError):
        return None
    residual = excess - (a * t ** (-b) + c)
    return {"a": float(a), "b": float(b), "c": float(c), "rms_residual": float(np.sqrt(np.mean(residual**2))),
            "t_from": int(t[0]), "t_to": int(t[-1])}


# -- the whole experiment --------------------------------------------------------------------------


@dataclasses.dataclass
class IclBayesConfig:
    """One run of the experiment: the task prior, the transformer, its pretraining, the evaluation."""

    prior: LinearTaskPrior = dataclasses.field(default_factory=LinearTaskPrior)
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    train_steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_ratio: float = 0.05
    eval_prompts: int = 2000
    seed: int = 0
    mis_specified: tuple[tuple[str, float, float], ...] = (
        ("noise ×2", 2.0, 1.0),
        ("noise 0", 0.0, 1.0),
        ("prior ×2", 1.0, 2.0),
    )
    """Evaluation priors different from pretraining: (name, noise_std factor, prior_std factor)."""


def pretrain(config: IclBayesConfig, output_dir: Path, *, overwrite: bool = False) -> tuple[InContextRegressor, dict[str, Any]]:
    """Pretrain the transformer with ``peftkit.training.train`` on fresh prompts (each prompt
    seen once); the best model by validation MSE is saved in ``output_dir``."""
    from transformers import set_seed

    from peftkit.training import TrainingConfig, train

    set_seed(config.seed)
    prior = config.prior
    model = InContextRegressor(prior.dim, prior.num_points, config.hidden_size, config.num_layers, config.num_heads)
    train_set = LinearPromptDataset(prior, config.train_steps * config.batch_size, seed=config.seed)
    validation_set = LinearPromptDataset(prior, 512, seed=config.seed + 1_000_003)

    def metrics_fn(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        squared = (predictions - targets) ** 2
        return {"mse": float(squared.mean()), "mse_last": float(squared[:, -1].mean())}

    training = TrainingConfig(
        epochs=1, batch_size=config.batch_size, eval_batch_size=256, learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio, lr_scheduler="cosine", seed=config.seed,
        checkpoint_every=max(1, config.train_steps // 4),
    )
    metrics = train(
        model, train_set, validation_set, torch.utils.data.default_collate, metrics_fn, training, output_dir,
        primary_metric="mse", greater_is_better=False, overwrite=overwrite, save_adapter=model.save_pretrained,
    )
    return InContextRegressor.from_pretrained(output_dir), metrics


def run_icl_bayes(config: IclBayesConfig, output_dir: str | os.PathLike, *, overwrite: bool = False,
                  pretrained: str | os.PathLike | None = None) -> dict[str, Any]:
    """Pretrain (or load ``pretrained``, a ``pretraining/`` directory of an earlier run, and only
    measure), measure in-distribution and mis-specified in-context errors, fit the decay, and
    write icl_bayes.json, icl_bayes.md and icl_bayes.png (plus the model under ``pretraining/``)."""
    config.prior.check()
    output = ensure_output_dir(output_dir, overwrite=overwrite)
    started = time.perf_counter()
    if pretrained is None:
        model, training_metrics = pretrain(config, output / "pretraining", overwrite=overwrite)
    else:
        model = InContextRegressor.from_pretrained(pretrained)
        if (model.dim, model.num_points) != (config.prior.dim, config.prior.num_points):
            raise PeftkitError(
                f"{pretrained} was pretrained with dim {model.dim} and num_points {model.num_points}; "
                "pass the same --dim and --num-points to measure it."
            )
        metrics_path = Path(pretrained) / "metrics.json"
        training_metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
        config = dataclasses.replace(config, **{key: value for key, value in model.settings.items() if key in ("hidden_size", "num_layers", "num_heads")})
    train_seconds = training_metrics.get("train_seconds", time.perf_counter() - started)
    prior = config.prior
    in_distribution = in_context_errors(model, prior, prior, config.eval_prompts, seed=config.seed + 2_000_003)
    shifted = []
    for name, noise_factor, prior_factor in config.mis_specified:
        prompt_prior = dataclasses.replace(prior, noise_std=prior.noise_std * noise_factor, prior_std=prior.prior_std * prior_factor)
        shifted.append({"name": name, **in_context_errors(model, prompt_prior, prior, config.eval_prompts, seed=config.seed + 3_000_017)})

    # Excess over the noise floor, fitted where the posterior mean is in its O(d/t) regime.
    t = np.arange(prior.num_points)
    fit_from = prior.dim + 1
    noise_floor = prior.noise_std**2
    fits = {
        name: fit_power_law(t[fit_from:], np.asarray(in_distribution[name])[fit_from:] - noise_floor)
        for name in ("transformer", "posterior_mean", "least_squares")
    }
    result = {
        "paper": "Zhang, Zhang, Yang, Wang 2023, What and How does In-Context Learning Learn? (Gaussian linear tasks)",
        "config": {**dataclasses.asdict(config), "prior": dataclasses.asdict(prior)},
        "noise_floor": noise_floor,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds,
        "pretrained": str(pretrained) if pretrained is not None else None,
        "train_steps_done": training_metrics.get("global_steps"),
        "final_validation_mse": training_metrics.get("best_metric"),
        "train_loss": training_metrics.get("train_loss"),
        "in_distribution": in_distribution,
        "excess_error_fits": fits,
        "mis_specified": shifted,
        "threads": torch.get_num_threads(),
    }
    atomic_write_json(output / RESULTS_JSON, result)
    atomic_write_text(output / RESULTS_MD, markdown_report(result))
    plot_icl_bayes(result, output / RESULTS_PLOT)
    return result


def _row(t: int, values: dict[str, Any]) -> str:
    return " | ".join(f"{values[name][t]:.3f}" for name in ("transformer", "posterior_mean", "least_squares", "distance_to_posterior_mean"))


def markdown_report(result: dict[str, Any]) -> str:
    """The error curve at a few t, the fits and the mis-specified prompts, as Markdown."""
    prior = result["config"]["prior"]
    dim, length = prior["dim"], prior["num_points"]
    shown = sorted({0, 1, dim // 2, dim - 1, dim, dim + 1, 2 * dim, 4 * dim, length - 1} & set(range(length)))
    lines = [
        f"d = {dim}, σ = {prior['noise_std']}, τ = {prior['prior_std']}, T = {length}; noise floor σ² = {result['noise_floor']:.3f}. "
        f"Transformer: {result['parameters']:,d} parameters, {result.get('train_steps_done') or result['config']['train_steps']} steps × {result['config']['batch_size']} prompts, "
        f"{result['train_seconds']:.0f} s. Errors are mean squared errors over {result['in_distribution']['num_prompts']} fresh prompts.",
        "",
        "| t (examples in context) | transformer | posterior mean | least squares | transformer − posterior mean (squared) |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {t} | {_row(t, result['in_distribution'])} |" for t in shown]
    lines += ["", f"Excess error over σ², fitted as a·t^(-b) + c for t ≥ {dim + 1}:", "", "| predictor | a | b | c | rms residual |", "|---|---:|---:|---:|---:|"]
    for name, fit in result["excess_error_fits"].items():
        lines.append(f"| {name} | " + (" | ".join(f"{fit[key]:.3g}" for key in ("a", "b", "c", "rms_residual")) if fit else "fit failed | | |") + " |")
    lines += ["", "Mis-specified prompts (the model and the posterior mean keep the pretraining prior):", "",
              "| prompts | t | transformer | posterior mean (pretraining prior) | posterior mean (true prior) | least squares |", "|---|---:|---:|---:|---:|---:|"]
    for shift in result["mis_specified"]:
        for t in (dim // 2, dim, 2 * dim, length - 1):
            if t < length:
                lines.append(
                    f"| {shift['name']} | {t} | " + " | ".join(
                        f"{shift[name][t]:.3f}" for name in ("transformer", "posterior_mean", "posterior_mean_true_prior", "least_squares")
                    ) + " |"
                )
    return "\n".join(lines) + "\n"


def plot_icl_bayes(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Left: error against t (log scale) for the three predictors; middle: distance to the
    posterior mean; right: the mis-specified prompts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.2), layout="constrained")
    left, middle, right = figure.subplots(1, 3)
    curves = result["in_distribution"]
    t = np.asarray(curves["t"])
    for name, label in (("transformer", "transformer"), ("posterior_mean", "posterior mean (Bayes)"), ("least_squares", "least squares")):
        left.plot(t, curves[name], label=label)
    left.axhline(result["noise_floor"], color="grey", linewidth=0.8, linestyle=":", label="noise σ²")
    left.set_yscale("log")
    left.set_xlabel("in-context examples t")
    left.set_ylabel("squared error")
    left.set_title("in-context error")
    left.legend()
    middle.plot(t, curves["distance_to_posterior_mean"], color="C3")
    middle.set_yscale("log")
    middle.set_xlabel("in-context examples t")
    middle.set_title("(transformer − posterior mean)²")
    for index, shift in enumerate(result["mis_specified"]):
        right.plot(t, shift["transformer"], color=f"C{index}", label=f"{shift['name']}: transformer")
        right.plot(t, shift["posterior_mean_true_prior"], color=f"C{index}", linestyle="--", label=f"{shift['name']}: Bayes, true prior")
    right.set_yscale("log")
    right.set_ylim(bottom=1e-3)  # noiseless prompts: the true-prior Bayes error falls to rounding error
    right.set_xlabel("in-context examples t")
    right.set_title("mis-specified prompts")
    if result["mis_specified"]:
        right.legend(fontsize=7)
    atomic_write(path, lambda tmp: FigureCanvasAgg(figure).print_png(tmp))


def icl_bayes_command(
    output: str = "runs/icl-bayes",
    dim: int = 5,
    num_points: int = 20,
    noise_std: float = 0.5,
    prior_std: float = 1.0,
    hidden_size: int = 64,
    num_layers: int = 3,
    num_heads: int = 4,
    train_steps: int = 3000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    eval_prompts: int = 2000,
    seed: int = 0,
    overwrite: bool = False,
    pretrained: str | None = None,
) -> dict[str, Any]:
    """Pretrain a small GPT-2 on Gaussian linear prompts and compare its in-context error with the Bayes posterior mean.

    Args:
        output: Directory for icl_bayes.json, icl_bayes.md, icl_bayes.png and the model (pretraining/).
        dim: d, the dimension of the inputs and of the task vector.
        num_points: T, the (x, y) pairs per prompt.
        noise_std: σ, the label noise in pretraining.
        prior_std: τ, the task prior's standard deviation in pretraining.
        hidden_size: The transformer's width.
        num_layers: The transformer's layers.
        num_heads: Attention heads per layer.
        train_steps: Optimizer steps of pretraining (each on batch_size fresh prompts).
        batch_size: Prompts per step.
        learning_rate: Peak AdamW learning rate (cosine decay after 5% warm-up, gradients clipped at norm 1).
        eval_prompts: Fresh prompts per evaluation curve.
        seed: Seeds the prompts, the initialisation and the data order.
        overwrite: Replace an existing run in --output.
        pretrained: Measure the model in this pretraining/ directory of an earlier run instead of pretraining one.
    """
    config = IclBayesConfig(
        prior=LinearTaskPrior(dim=dim, num_points=num_points, noise_std=noise_std, prior_std=prior_std),
        hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, train_steps=train_steps,
        batch_size=batch_size, learning_rate=learning_rate, eval_prompts=eval_prompts, seed=seed,
    )
    result = run_icl_bayes(config, output, overwrite=overwrite, pretrained=pretrained)
    print(markdown_report(result))
    print(f"written: {Path(output) / RESULTS_JSON}, {Path(output) / RESULTS_MD}, {Path(output) / RESULTS_PLOT}")
    return result
