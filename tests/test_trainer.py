"""SemiSupervisedTrainer on its own: unlabeled cycling, fallback without unlabeled data, non-finite losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scripts.engine import NonFiniteLossError, SemiSupervisedTrainer, loss_terms
from scripts.methods.base import SemiSupervisedMethod, StepOutput


class _RecordingMethod(SemiSupervisedMethod):
    """Records what the trainer hands over; optionally makes one term non-finite at one iteration."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.seen: list[tuple[int, int | None]] = []
        self.nan_at = nan_at

    def step(self, network, image, label, unlabeled, epoch):
        logits = network(image)
        sup = logits.mean() ** 2
        aux = logits.mean() * 0
        if self.nan_at is not None and len(self.seen) + 1 == self.nan_at:
            aux = aux + float("nan")
        self.seen.append((image.shape[0], None if unlabeled is None else unlabeled.shape[0]))
        return StepOutput(loss=sup + aux, terms={"loss_sup": sup, "loss_aux": aux}, pred=logits)


def _loader(n, with_label=True):
    items = [{"image": torch.randn(2, 8, 8)} | ({"label": torch.zeros(1, 8, 8)} if with_label else {}) for _ in range(n)]
    return torch.utils.data.DataLoader(items, batch_size=2)


def _trainer(method, unlabeled_loader, epochs=1, epoch_length=5):
    net = nn.Conv2d(2, 3, 1)
    return SemiSupervisedTrainer(
        device="cpu", max_epochs=epochs, epoch_length=epoch_length, train_data_loader=_loader(4),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), method=method,
        unlabeled_data_loader=unlabeled_loader,
    )


def test_unlabeled_loader_is_cycled_through_the_epoch():
    method = _RecordingMethod()
    # 3 unlabeled items in batches of 2: batches of 2, 1, 2, 1, ... ; 5 iterations of 2 labeled
    _trainer(method, _loader(3, with_label=False)).run()
    assert method.seen == [(2, 2), (2, 1), (2, 2), (2, 1), (2, 2)]


def test_no_unlabeled_loader_means_no_unlabeled_batches():
    method = _RecordingMethod()
    _trainer(method, None).run()
    assert [u for _, u in method.seen] == [None] * 5


def test_non_finite_term_stops_training_and_names_it():
    method = _RecordingMethod(nan_at=3)
    trainer = _trainer(method, None)
    with pytest.raises(NonFiniteLossError, match=r"iteration 3 .*loss_aux"):
        trainer.run()


def test_loss_terms_selects_losses_and_weights():
    out = {"loss": torch.tensor(1.5), "loss_sup": torch.tensor(1.0), "weight_cac": 0.2, "image": torch.zeros(1), "pred": torch.zeros(1)}
    assert loss_terms(out) == {"loss": 1.5, "loss_sup": 1.0, "weight_cac": 0.2}
    assert loss_terms([out, out]) == {"loss": 1.5, "loss_sup": 1.0, "weight_cac": 0.2}
