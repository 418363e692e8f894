"""The rank losses (CoSENT, AnglE): a hand-computed case, sentence-transformers' values on the same
batch, the filler slots and step weights, and the first step of a real training run against
sentence-transformers' loss on its own embeddings of that step's pairs. BCE for cross-encoders:
its value by hand, and which combinations of loss, head and targets are refused."""
from __future__ import annotations

import json
import math

import pytest
import torch

from toolkit.model.losses import angle_similarity, batch_objective, rank_loss


def test_hand_computed_cases():
    # y_0 > y_2 > y_1: ordered pairs (0,1), (0,2), (2,1) with s_j - s_i = -0.8, -0.4, -0.4 (x 20)
    f64 = dict(dtype=torch.float64)  # float32 would round log(1 + 6.7e-4) to ~2e-4 of the value
    got = rank_loss(torch.tensor([0.9, 0.1, 0.5], **f64), torch.tensor([5.0, 0.0, 3.0], **f64))
    assert got.item() == pytest.approx(math.log(1 + math.exp(-16) + 2 * math.exp(-8)), rel=1e-6)
    wrong_order = rank_loss(torch.tensor([0.1, 0.9], **f64), torch.tensor([5.0, 0.0], **f64))
    assert wrong_order.item() == pytest.approx(math.log(1 + math.exp(16)), rel=1e-6)
    assert rank_loss(torch.tensor([0.3, 0.7, 0.1]), torch.tensor([2.0, 2.0, 2.0])).item() == 0.0  # ties: nothing
    # only the order of the targets enters: any increasing map of them gives the same loss
    s, y = torch.tensor([0.2, 0.8, 0.5, 0.4]), torch.tensor([1.0, 4.5, 2.0, 3.0])
    assert rank_loss(s, y).item() == pytest.approx(rank_loss(s, (y - 2.5) / 1.3).item(), rel=1e-7)
    # AnglE on two 2-d vectors (one complex number each): |Re + Im| of (a / b) / (|a| / |b|)
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # 1 and i: a/b = -i
    assert angle_similarity(a, b).item() == pytest.approx(1.0)
    assert angle_similarity(torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 4.0]])).item() == pytest.approx(1.0)


@pytest.mark.parametrize("dim", [384, 7])  # odd: both pad the last dimension
def test_same_values_as_sentence_transformers(dim):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss
    from sentence_transformers.util import pairwise_angle_sim

    g = torch.Generator().manual_seed(dim)
    a, b = torch.randn(16, dim, generator=g), torch.randn(16, dim, generator=g)
    labels = torch.randint(0, 6, (16,), generator=g).float()  # ties included
    torch.testing.assert_close(angle_similarity(a, b), pairwise_angle_sim(a, b), rtol=1e-5, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    for ours, theirs in ((rank_loss(cos, labels), CoSENTLoss(None)),
                         (rank_loss(angle_similarity(a, b), labels), AnglELoss(None))):
        want = theirs.compute_loss_from_embeddings([a, b], labels)
        assert ours.item() == pytest.approx(want.item(), rel=1e-5)


def test_filler_slots_are_skipped_and_the_batch_weighs_its_share():
    s = torch.tensor([0.9, 0.1, 0.5, 0.2])
    y = torch.tensor([5.0, 0.0, 3.0, 1.0])
    w = torch.tensor([0.1, 0.1, 0.1, 0.0])  # the last slot only fills the batch; the batch is 30% of its step
    objective, logged = batch_objective("cosent", s, y, w)
    alone = rank_loss(s[:3], y[:3])
    assert objective.item() == pytest.approx(0.3 * alone.item(), rel=1e-6)
    assert logged.item() == pytest.approx(3 * alone.item(), rel=1e-6)  # per counted pair, as mse logs
    mse, mse_logged = batch_objective("mse", s, y, w)
    assert mse.item() == pytest.approx(float(((s - y) ** 2 * w).sum()), rel=1e-6)
    assert mse_logged.item() == pytest.approx(float(((s - y)[:3] ** 2).sum()), rel=1e-6)
    s.requires_grad_()
    batch_objective("angle", s, y, w)[0].backward()
    assert s.grad[3] == 0 and torch.isfinite(s.grad).all()  # a filler slot gets no gradient


@pytest.mark.parametrize("loss", ["cosent", "angle"])
def test_first_training_step_equals_sentence_transformers_on_that_batch(tmp_path, small_stsb, loss):
    """The training loop's first logged loss (dropout off, adapter at its identity start) is
    sentence-transformers' CoSENTLoss/AnglELoss of the pre-trained model on the same pairs."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss

    from toolkit.model.config import ModelConfig
    from toolkit.model.safe_loading import resolve_model
    from toolkit.sources import SourceOptions, read_pairs
    from toolkit.training.config import TrainConfig
    from toolkit.training.loop import train
    from toolkit.training.run_data import DataConfig

    seen = []
    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=40))
    train(tmp_path / "run", data, ModelConfig(dropout=0.0), TrainConfig(epochs=1, batch_size=8, loss=loss,
                                                                         log_steps=1, patience=0),
          observe=lambda b: seen.append(b))
    first = json.loads((tmp_path / "run" / "steps.jsonl").read_text().splitlines()[0])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["loss"] == loss
    pairs, _ = read_pairs(small_stsb["train"], SourceOptions(limit=40), gold=True)
    batch = seen[0].indices
    model = st.SentenceTransformer(str(resolve_model("all-MiniLM-L6-v2")[1]), device="cpu")
    a = model.encode([pairs.s1[i] for i in batch], convert_to_tensor=True)
    b = model.encode([pairs.s2[i] for i in batch], convert_to_tensor=True)
    labels = torch.tensor(pairs.scores[batch], dtype=torch.float32)
    peer = CoSENTLoss(None) if loss == "cosent" else AnglELoss(None)
    want = peer.compute_loss_from_embeddings([a, b], labels).item()
    assert first["loss"] == pytest.approx(want, rel=2e-3, abs=2e-3)


def test_rank_losses_are_for_bi_encoders(tmp_path, small_stsb):
    from toolkit.common.errors import ToolkitError
    from toolkit.model.config import ModelConfig
    from toolkit.training.config import TrainConfig
    from toolkit.training.loop import train
    from toolkit.training.run_data import DataConfig

    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]))
    with pytest.raises(ToolkitError, match="--loss cosent ranks a bi-encoder's similarities"):
        train(tmp_path / "run", data, ModelConfig(arch="cross"), TrainConfig(loss="cosent"))
    with pytest.raises(ToolkitError, match="--loss must be one of mse, cosent, angle, bce"):
        TrainConfig(loss="huber").validate()


def test_bce_by_hand_with_filler_slots():
    logits = torch.tensor([2.0, -1.0, 0.0, 3.0], dtype=torch.float64)
    y = torch.tensor([0.8, 0.2, 0.5, 1.0], dtype=torch.float64)
    w = torch.tensor([0.25, 0.25, 0.25, 0.0], dtype=torch.float64)  # the last slot only fills the batch
    sig = 1 / (1 + torch.exp(-logits))
    by_hand = -(y * torch.log(sig) + (1 - y) * torch.log(1 - sig))
    objective, logged = batch_objective("bce", logits, y, w)
    assert objective.item() == pytest.approx(float((by_hand * w).sum()), rel=1e-12)
    assert logged.item() == pytest.approx(float(by_hand[:3].sum()), rel=1e-12)
    # its minimum over the logit is at sigmoid(logit) = y, where the loss is y's entropy
    best = torch.logit(y[:3])
    at_best = batch_objective("bce", best, y[:3], torch.ones(3, dtype=torch.float64))[1]
    entropy = -(y[:3] * torch.log(y[:3]) + (1 - y[:3]) * torch.log(1 - y[:3])).sum()
    assert at_best.item() == pytest.approx(entropy.item(), rel=1e-12)


def test_bce_combinations_that_cannot_work_are_refused(tmp_path, small_stsb):
    from toolkit.common.errors import ToolkitError
    from toolkit.model.config import ModelConfig
    from toolkit.training.config import TrainConfig, objective_model
    from toolkit.training.loop import train
    from toolkit.training.run_data import DataConfig

    cross = ModelConfig(arch="cross")
    assert objective_model(cross, TrainConfig(loss="bce")).head_activation == "sigmoid"
    assert objective_model(cross, TrainConfig()).head_activation is None  # mse: the identity, as before
    with pytest.raises(ToolkitError, match="--loss bce is for cross-encoders"):
        objective_model(ModelConfig(arch="bi"), TrainConfig(loss="bce"))
    with pytest.raises(ToolkitError, match="drop --head-activation identity"):
        objective_model(ModelConfig(arch="cross", head_activation="identity"), TrainConfig(loss="bce"))
    with pytest.raises(ToolkitError, match="--head-init lp fits the head's last layer"):
        objective_model(cross, TrainConfig(loss="bce", head_init="lp"))
    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]))
    with pytest.raises(ToolkitError, match="a sigmoid head .* predicts the score scaled to 0..1"):
        train(tmp_path / "run", data, cross, TrainConfig(loss="bce", normalize="zscore"))
