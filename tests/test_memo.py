import pytest
import torch

from sora_edu.train.memo import TargetMemo, clip_key


def _towers(calls):
    def compute(clips):
        calls.append(len(clips))
        return clips.mean(dim=(2, 3)) * 1.001, clips[:, :1].flatten(1)  # two targets of different shapes
    return compute


def test_target_memo_computes_each_clip_once_and_keeps_the_batch_order():
    torch.manual_seed(0)
    data = torch.randn(6, 3, 4, 4)
    calls, memo = [], TargetMemo(capacity=10)
    compute = _towers(calls)
    first = memo(data[:4], compute)
    assert calls == [4] and len(memo) == 4
    # a batch mixing seen and unseen clips, in another order, with a clip repeated
    order = torch.tensor([5, 1, 4, 1, 0])
    again = memo(data[order], compute)
    assert calls == [4, 2] and len(memo) == 6 and memo.computed == 6
    for got, want in zip(again, _towers([])(data[order])):
        torch.testing.assert_close(got, want.to(torch.bfloat16).float())  # rounded to bf16, hit or miss
    torch.testing.assert_close(again[0][1], first[0][1])
    assert all(a.dtype == torch.float32 for a in again)
    assert memo(data[[1, 0]], compute)[1].shape == (2, 16) and calls == [4, 2]  # all hits: nothing computed


def test_target_memo_capacity_bounds_the_store_and_rejects_zero():
    calls, memo = [], TargetMemo(capacity=2, dtype=torch.float32)
    data = torch.randn(4, 3, 4, 4)
    out = memo(data, _towers(calls))
    assert len(memo) == 2 and calls == [4]
    torch.testing.assert_close(out[0], data.mean(dim=(2, 3)) * 1.001)  # fp32 store: exact
    memo(data, _towers(calls))
    assert calls == [4, 2]  # the two clips past capacity are computed again
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        TargetMemo(0)


def test_clip_key_tells_values_shapes_and_dtypes_apart():
    x = torch.zeros(2, 8)
    assert clip_key(x) == clip_key(torch.zeros(2, 8)) != clip_key(torch.zeros(8, 2))
    assert clip_key(x) != clip_key(x.double()) and clip_key(x) != clip_key(x + 1e-7)
    assert clip_key(torch.arange(16.0)[::2]) == clip_key(torch.arange(0.0, 16.0, 2.0))  # strides do not matter
