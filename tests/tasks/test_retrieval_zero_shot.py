"""Retrieval recall with several captions per image, and zero-shot top-k, against hand counts."""

from __future__ import annotations

import pytest
import torch

from flava.tasks.metrics import recall_at_k, topk_accuracy
from flava.tasks.zero_shot import imagenet_classnames, imagenet_templates


def brute_force(images, texts, owner, k):
    """Independent loop reference."""
    images = images / images.norm(dim=1, keepdim=True)
    texts = texts / texts.norm(dim=1, keepdim=True)
    i2t = 0
    for i in range(len(images)):
        order = sorted(range(len(texts)), key=lambda t: -float(images[i] @ texts[t]))
        i2t += any(owner[t] == i for t in order[:k])
    t2i = 0
    for t in range(len(texts)):
        order = sorted(range(len(images)), key=lambda i: -float(images[i] @ texts[t]))
        t2i += int(owner[t]) in order[:k]
    return i2t / len(images), t2i / len(texts)


def test_recall_with_several_captions_per_image():
    images = torch.eye(3)  # image i points along axis i
    # image 0 owns t0 (good) and t1 (points at image 1); image 1 owns t2 (points away); image 2 t3
    texts = torch.tensor([[1.0, 0, 0], [0.3, 1.0, 0], [0, -1.0, 0], [0.2, 0, 1.0]])
    owner = torch.tensor([0, 0, 1, 2])
    r = recall_at_k(images, texts, owner, ks=(1, 2))
    # image->text: img0 hit@1 (t0); img1's own t2 ranks 4th (miss); img2 hit@1 (t3)
    assert r["image_to_text/R@1"] == pytest.approx(2 / 3)
    assert r["image_to_text/R@2"] == pytest.approx(2 / 3)
    # text->image: t0 hit@1; t1 ranks img0 second; t2 ranks img1 third; t3 hit@1
    assert r["text_to_image/R@1"] == pytest.approx(2 / 4)
    assert r["text_to_image/R@2"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="text_to_image"):
        recall_at_k(images, texts, owner[:3])


def test_recall_matches_brute_force_on_random_data():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(20, 8, generator=g)
    owner = torch.randint(0, 20, (55,), generator=g)
    texts = images[owner] + 1.5 * torch.randn(55, 8, generator=g)
    r = recall_at_k(images, texts, owner, ks=(1, 5))
    for k in (1, 5):
        i2t, t2i = brute_force(images, texts, owner, k)
        assert r[f"image_to_text/R@{k}"] == pytest.approx(i2t)
        assert r[f"text_to_image/R@{k}"] == pytest.approx(t2i)


def test_topk_accuracy_and_shipped_data():
    classes = torch.eye(4)
    images = torch.tensor([[1.0, 0.5, 0, 0], [0, 0.2, 0.9, 0], [0, 0, 0, 1.0]])
    labels = torch.tensor([0, 1, 3])
    acc = topk_accuracy(images, classes, labels, ks=(1, 2))
    assert acc["top1"] == pytest.approx(2 / 3) and acc["top2"] == pytest.approx(1.0)
    names = imagenet_classnames()
    assert len(names) == 1000 and names[0] == "tench"
    assert len(imagenet_templates(80)) == 80 and len(imagenet_templates(7)) == 7
    with pytest.raises(ValueError):
        imagenet_templates(5)
