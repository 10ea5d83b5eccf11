"""SemiSupervisedTrainer on its own: unlabeled cycling, fallback without unlabeled data, non-finite losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scripts.engine import NonFiniteLossError, SemiSupervisedTrainer, loss_terms
from scripts.engine.method import SemiSupervisedMethod, StepOutput


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


def test_gradient_accumulation_steps_once_on_the_mean_gradient():
    torch.manual_seed(0)
    items = [{"image": torch.randn(2, 8, 8), "label": torch.zeros(1, 8, 8)} for _ in range(6)]
    loader = torch.utils.data.DataLoader(items, batch_size=2)  # 3 iterations per epoch, in order
    net = nn.Conv2d(2, 3, 1)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = SemiSupervisedTrainer(
        device="cpu", max_epochs=1, train_data_loader=loader, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), method=_RecordingMethod(), accumulation_steps=2,
    )
    trainer.run()
    # by hand: one step on the mean gradient of batches 1 and 2, then one on batch 3 alone (end of epoch)
    ref = nn.Conv2d(2, 3, 1)
    ref.load_state_dict(start)
    batches = [torch.stack([items[2 * i + j]["image"] for j in range(2)]) for i in range(3)]
    for group in ([batches[0], batches[1]], [batches[2]]):
        grads = []
        for image in group:
            ref.zero_grad()
            (ref(image).mean() ** 2).backward()
            grads.append([p.grad.clone() for p in ref.parameters()])
        with torch.no_grad():
            for i, p in enumerate(ref.parameters()):
                p -= 0.1 * sum(g[i] for g in grads) / len(grads)
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], value)


def test_unused_supervised_trainer_arguments_are_refused():
    net = nn.Conv2d(2, 3, 1)
    common = dict(device="cpu", max_epochs=1, train_data_loader=_loader(2), network=net,
                  optimizer=torch.optim.SGD(net.parameters(), lr=0.1), method=_RecordingMethod())
    from monai.inferers import SimpleInferer

    with pytest.raises(TypeError, match="does not use inferer"):
        SemiSupervisedTrainer(**common, inferer=SimpleInferer())
    with pytest.raises(TypeError, match="does not use compile"):
        SemiSupervisedTrainer(**common, compile=True)
    with pytest.raises(ValueError, match="accumulation_steps must be >= 1"):
        SemiSupervisedTrainer(**common, accumulation_steps=0)
    SemiSupervisedTrainer(**common, compile=False)  # the default is fine


class _LateUnlabeled(_RecordingMethod):
    def uses_unlabeled_at(self, epoch):
        return epoch >= 1.0


def test_no_unlabeled_batch_is_loaded_before_the_method_needs_one():
    drawn = []

    class _Counting(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            drawn.append(i)
            return {"image": torch.randn(2, 8, 8)}

    method = _LateUnlabeled()
    trainer = _trainer(method, torch.utils.data.DataLoader(_Counting(), batch_size=2), epochs=2, epoch_length=2)
    trainer.run()
    assert [u for _, u in method.seen] == [None, None, 2, 2]  # epoch 1: none; epoch 2: unlabeled batches
    assert len(drawn) == 4  # two batches of two, all in epoch 2


def test_training_loader_rules():
    """scripts.data.loaders.training_loader: no loader without cases, the last incomplete batch dropped only
    when there is a full one, persistent workers only with workers, loader classes by name."""
    from monai.data import ThreadDataLoader

    from scripts.data.loaders import training_loader

    assert training_loader(None, 2) is None and training_loader([], 2) is None
    three = training_loader([1, 2, 3], 2)
    assert three.drop_last and len(three) == 1 and not three.persistent_workers
    one = training_loader([1], 2)
    assert not one.drop_last and len(one) == 1  # a tiny labeled set still trains
    assert isinstance(training_loader([1, 2], 2, loader="ThreadDataLoader"), ThreadDataLoader)
    with pytest.raises(ValueError, match="no_such_loader"):
        training_loader([1], 1, loader="no_such_loader")
