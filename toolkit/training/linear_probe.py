"""Linear probe for the cross-encoder's head: the start of LP-FT and the α = 0 end of WiSE-FT.

A regression head has no zero-shot version, so a cross-encoder has no pre-trained predictor to
interpolate back to. Following LP-FT (Kumar et al., 2022), the head is first fitted on the frozen
pre-trained features and fine-tuning starts from it; WiSE-FT then interpolates between this linear
probe and the fine-tuned model. The head is Linear-tanh-Linear on the [CLS] state: its first layer
takes BERT's pre-trained pooler (dense + tanh, the pair features BERT was pre-trained to expose), its
last layer is ridge regression on those features, with the penalty chosen on dev MSE by the
one-standard-error rule (below).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from toolkit.common.errors import ToolkitError
from toolkit.model.architectures import architecture
from toolkit.model.batching import PairTokenizer
from toolkit.model.regressor import NAME, PairRegressor
from toolkit.scoring.torch_engine import Predictor

RIDGE_PENALTIES = tuple(float(x) for x in np.logspace(-2, 4, 13))
EXTEND_DECADES = 6


@dataclass
class ProbeResult:
    penalty: float
    train_mse: float
    dev_mse: float
    at_edge: bool = False  # the best penalty is the grid's last even after extending it

    def describe(self) -> str:
        edge = ("; warning: the penalty is at the edge of the searched range, the probe may be poor"
                if self.at_edge else "")
        return (f"linear probe (ridge, penalty {self.penalty:g} chosen on dev): normalised MSE train "
                f"{self.train_mse:.4f}, dev {self.dev_mse:.4f}{edge}")


def _head(model: PairRegressor) -> torch.nn.Module:
    head = model.encoder.heads[NAME]
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    if len(linears) != 2:
        raise ToolkitError(f"--head-init lp needs the two-layer (Linear, tanh, Linear) head, not {len(linears)} layers")
    return head


def pooler_into_head(model: PairRegressor) -> None:
    """The head's first layer := the pre-trained pooler's dense layer (both are followed by tanh)."""
    pooler = getattr(model.encoder.base_model, "pooler", None)
    if pooler is None or not hasattr(pooler, "dense"):
        raise ToolkitError("--head-init lp needs a base model with a pre-trained pooler (BERT-like models have one)")
    first = _head(model)[1]
    with torch.no_grad():
        first.weight.copy_(pooler.dense.weight)
        first.bias.copy_(pooler.dense.bias)


@torch.inference_mode()
def head_features(model: PairRegressor, tokens: PairTokenizer, s1: Sequence[str], s2: Sequence[str],
                  batch_size: int, device: torch.device | str) -> np.ndarray:
    """What the head's last layer sees for each pair (float64, input order)."""
    last = _head(model)[4]
    seen: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        def features(**batch) -> torch.Tensor:
            model(**batch)
            return seen.pop()

        runner = Predictor(model, tokens, labels=None, batch_size=batch_size, device=device)
        encoded = [e[0] for e in tokens.encode_pairs(s1, s2)]
        return runner.run_batches(encoded, features).astype(np.float64)
    finally:
        hook.remove()
        model.train(was_training)


def fit_ridge(x: np.ndarray, y: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray,
              penalties: Sequence[float] = RIDGE_PENALTIES,
              extend: int = EXTEND_DECADES) -> tuple[np.ndarray, float, ProbeResult]:
    """Ridge regression (unpenalised intercept) for each penalty via one SVD. The penalty chosen is
    the largest whose dev MSE is within one standard error of the lowest (glmnet's ``lambda.1se``):
    dev MSE often cannot tell 1e-5 from 0.1 apart, but the weights of the smaller are ten times larger,
    which turns every change of the features (dropout's, the first updates') into a large change of the
    output: fine-tuning from such a head diverged (STS-B, forum held out: loss 5 → 35 in the first
    epoch, no epoch beat the probe; with the one-SE penalty, dev Spearman 60 → 87). A choice at
    either end of the grid extends the grid by a decade in that direction (``extend`` times at most);
    one still at the end is flagged ``at_edge``. numpy rather than scikit-learn: one SVD is all it
    takes, and RidgeCV has no one-SE rule."""
    mean_x, mean_y = x.mean(0), y.mean()
    u, s, vt = np.linalg.svd(x - mean_x, full_matrices=False)
    uty = u.T @ (y - mean_y)

    def fit(penalty: float) -> tuple[np.ndarray, float, ProbeResult, float]:
        w = vt.T @ (s / (s ** 2 + penalty) * uty)
        b = mean_y - mean_x @ w
        errors = (x_dev @ w + b - y_dev) ** 2
        se = float(errors.std(ddof=1) / np.sqrt(len(errors))) if len(errors) > 1 else 0.0
        train_mse = float(np.mean((x @ w + b - y) ** 2))
        return w, float(b), ProbeResult(float(penalty), train_mse, float(errors.mean())), se

    def choose() -> float:
        lowest = min(fits, key=lambda p: fits[p][2].dev_mse)
        bound = fits[lowest][2].dev_mse + fits[lowest][3]
        return max(p for p in fits if fits[p][2].dev_mse <= bound)

    grid = sorted(penalties)
    fits = {p: fit(p) for p in grid}
    for _ in range(extend):
        chosen = choose()
        if chosen not in (grid[0], grid[-1]):
            break
        if chosen == grid[0]:
            grid.insert(0, grid[0] / 10)
            fits[grid[0]] = fit(grid[0])
        else:
            grid.append(grid[-1] * 10)
            fits[grid[-1]] = fit(grid[-1])
    chosen = choose()
    w, b, result, _ = fits[chosen]
    result.at_edge = chosen in (grid[0], grid[-1])
    return w, b, result


def fit_linear_probe(model: PairRegressor, tokens: PairTokenizer, train_s: tuple[Sequence[str], Sequence[str]],
                     train_y: np.ndarray, dev_s: tuple[Sequence[str], Sequence[str]], dev_y: np.ndarray,
                     batch_size: int, device: torch.device | str) -> ProbeResult:
    """Set the cross-encoder's head to the linear probe; targets are normalised scores."""
    if not architecture(model.cfg.arch).has_head:
        raise ToolkitError("--head-init lp is for cross-encoders: a bi-encoder has no head (its α = 0 is the "
                           "pre-trained model itself)")
    pooler_into_head(model)
    x = head_features(model, tokens, *train_s, batch_size, device)
    x_dev = head_features(model, tokens, *dev_s, batch_size, device)
    w, b, result = fit_ridge(x, np.asarray(train_y, np.float64), x_dev, np.asarray(dev_y, np.float64))
    last = _head(model)[4]
    with torch.no_grad():
        last.weight.copy_(torch.as_tensor(w, dtype=last.weight.dtype).view_as(last.weight))
        last.bias.fill_(b)
    return result
