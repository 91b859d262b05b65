"""The supervised contrastive loss of ``safety/finetune_encoder.py --supcon``."""

from __future__ import annotations

import pytest

from .conftest import safety_script

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def finetune():
    return safety_script("finetune_encoder")


def _unit(rows):
    return torch.nn.functional.normalize(torch.as_tensor(rows, dtype=torch.float32), dim=1)


def test_loss_is_lower_when_classes_cluster(finetune):
    classes = torch.tensor([0, 0, 1, 1])
    clustered = _unit([[1, 0.1], [1, -0.1], [-1, 0.1], [-1, -0.1]])
    mixed = _unit([[1, 0.1], [-1, 0.1], [1, -0.1], [-1, -0.1]])
    low = finetune.supcon_loss(clustered, classes, 0.1)
    high = finetune.supcon_loss(mixed, classes, 0.1)
    assert float(low) < 0.05 < float(high)


def test_rows_without_a_partner_add_nothing(finetune):
    emb = _unit([[1, 0], [0, 1], [1, 1]]).requires_grad_(True)
    loss = finetune.supcon_loss(emb, torch.tensor([0, 1, 2]), 0.1)
    assert float(loss) == 0.0
    loss.backward()  # still a graph: the training step can always call backward
    assert emb.grad is not None and float(emb.grad.abs().sum()) == 0.0


def test_gradient_pulls_a_pair_together(finetune):
    emb = _unit([[1, 0], [0, 1], [-1, 0]]).requires_grad_(True)
    loss = finetune.supcon_loss(emb, torch.tensor([0, 0, 1]), 0.5)
    loss.backward()
    # Descending the gradient moves row 0 towards row 1 (its class partner).
    step = _unit(emb.detach() - 0.1 * emb.grad)
    before = float(emb[0] @ emb[1])
    after = float(step[0] @ step[1])
    assert after > before


def test_class_ids_separate_roles_and_labels(finetune):
    rows = [
        {"role": "user", "label": "crisis"},
        {"role": "user", "label": "none"},
        {"role": "assistant", "label": "crisis"},
        {"role": "user", "label": "crisis"},
    ]
    ids = finetune.class_ids(rows).tolist()
    assert ids[0] == ids[3] and len({ids[0], ids[1], ids[2]}) == 3
