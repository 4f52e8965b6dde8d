"""The teacher-logit cache: same logits as the teacher, the teacher run once per distinct input."""

import torch
from torch import nn

from rscompress.distillation.teacher_cache import CachedTeacher


def _teacher_and_calls():
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()
    seen: list[int] = []
    teacher.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[0]))
    return teacher, seen


def test_hits_return_the_teachers_logits_without_running_it():
    teacher, seen = _teacher_and_calls()
    cached = CachedTeacher(teacher)
    x = torch.randn(6, 3, 8, 8)
    first = cached(x)
    assert torch.allclose(first, teacher(x), atol=1e-6) and seen == [6, 6]
    again = cached(x.flip(0))  # same samples, other order
    assert torch.equal(again, first.flip(0)) and seen == [6, 6]  # no teacher call
    mixed = torch.cat([x[:2], torch.randn(3, 3, 8, 8)])
    out = cached(mixed)
    assert seen[-1] == 3  # only the new samples went through the teacher
    assert torch.allclose(out, teacher(mixed), atol=1e-6)
    assert cached.counts == {"hits": 8, "misses": 9}


def test_memory_layout_does_not_change_the_key_and_the_bound_holds():
    teacher, seen = _teacher_and_calls()
    cached = CachedTeacher(teacher, max_entries=2)
    x = torch.randn(4, 3, 8, 8)
    out = cached(x)
    assert len(cached._logits) == 2  # the bound: the other two rows were used, not kept
    out_cl = cached(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(out_cl[:2], out[:2]) and seen == [4, 2]  # the two kept rows were hits
    assert torch.allclose(out_cl, out, atol=1e-6)
