"""Score arithmetic on hand-made argmax positions (known answers)."""

import torch

from retrieval_head.core.scoring import RetrievalScorer, rouge1_recall


def test_count_and_set_known_answer():
    # span [10, 14) holds ids [7, 8, 9, 7]; the model emits 7, 8, 7 (docstring example)
    prompt = [0] * 10 + [7, 8, 9, 7] + [0] * 6
    steps = [(7, [10, 10]), (8, [11, 11]), (7, [13, 10])]  # head 0 -> 10,11,13; head 1 -> 10,11,10
    for mode, expected in (("count", [0.75, 0.75]), ("set", [0.75, 0.5])):
        sc = RetrievalScorer(prompt, (10, 14), num_layers=1, num_heads=2, mode=mode)
        for tok, pos in steps:
            sc.update(torch.tensor([pos]), tok)
        assert sc.scores().tolist() == [expected]


def test_no_copy_outside_span_or_on_other_token():
    prompt = list(range(20))
    sc = RetrievalScorer(prompt, (5, 8), num_layers=2, num_heads=2)
    # in span but wrong token; right token but outside span; beyond the prompt (generated)
    sc.update(torch.tensor([[5, 4], [25, 6]]), 6)
    assert sc.scores().tolist() == [[0.0, 0.0], [0.0, 1 / 3]]


def test_count_can_exceed_one():
    prompt = [1, 2, 3]
    sc = RetrievalScorer(prompt, (1, 2), num_layers=1, num_heads=1)
    for _ in range(3):
        sc.update(torch.tensor([[1]]), 2)
    assert sc.scores().item() == 3.0


def test_rouge1_recall():
    assert rouge1_recall("It is Captain Juniper.", "Captain Juniper") == 100.0
    assert rouge1_recall("smoked cardamom", "a pinch of smoked cardamom") == 40.0
    assert rouge1_recall("no idea", "Captain Juniper") == 0.0
