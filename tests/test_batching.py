"""The detectors' shared batching helpers (`curate.detect.batching`): grouping, filling, queueing. No models."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from curate.detect.batching import (
    PaddingMasks,
    canvas_batches,
    chunks,
    groups_by_key,
    in_place,
    letterbox,
    letterbox_crops,
    next_power_of_two,
    pad_to_count,
    padded_batch,
    run_batches,
    submit_batches,
    valid_sizes,
)
from curate.detect.types import Detections


def test_grouping() -> None:
    assert chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert chunks([], 3) == []
    assert groups_by_key(["b", "a", "b", "c", "a"]) == {"b": [0, 2], "a": [1, 4], "c": [3]}
    # canvases of side 128 (index 1, 2), 256 (0, 3, 4): smallest first, then chunks of the batch size
    sizes = [(200, 150), (100, 128), (90, 60), (129, 10), (256, 256)]
    assert canvas_batches(sizes, 2, 128) == [[1, 2], [0, 3], [4]]
    assert [next_power_of_two(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]


def test_filling() -> None:
    images = [torch.full((3, 2, 3), 7, dtype=torch.uint8), torch.full((3, 4, 1), 9, dtype=torch.uint8)]
    batch = padded_batch(iter(images), 3, 4, 3, torch.device("cpu"), torch.float32)
    assert batch.shape == (3, 3, 4, 3) and batch.is_contiguous(memory_format=torch.channels_last)
    assert batch[0, :, :2, :].eq(7).all() and batch[0, :, 2:, :].eq(0).all()
    assert batch[1, :, :, :1].eq(9).all() and batch[1, :, :, 1:].eq(0).all() and batch[2].eq(0).all()

    assert valid_sizes([(4, 3), (4, 3)], 4, 3, 2, torch.device("cpu")) is None
    valid = valid_sizes([(2, 3), (4, 1)], 4, 3, 3, torch.device("cpu"))
    assert valid is not None and valid.tolist() == [[2, 3], [4, 1], [4, 3]]  # the filler slot counts as whole
    masked = PaddingMasks(valid)(torch.ones(3, 1, 4, 3), 1)
    assert masked[0, 0].sum() == 6 and masked[1, 0].sum() == 4 and masked[2, 0].sum() == 12

    padded = pad_to_count(torch.ones(3, 2), 4, 5.0)
    assert padded.tolist() == [[1, 1], [1, 1], [1, 1], [5, 5]]


def test_letterbox_crops_one_at_a_time_equal_the_stack(monkeypatch) -> None:
    import curate.detect.batching as batching

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, 60, 90), dtype=np.uint8))
    windows = [(0, 0, 50, 40), (40, 0, 90, 40), (0, 20, 50, 60), (40, 20, 90, 60)]
    stacked = torch.full((4, 3, 32, 32), 114.0)
    ratios = letterbox_crops(image, windows, 32, stacked)
    monkeypatch.setattr(batching, "CHUNK_ELEMENTS", 100)
    one_by_one = torch.full((4, 3, 32, 32), 114.0)
    assert letterbox_crops(image, windows, 32, one_by_one) == ratios == [32 / 50] * 4
    assert torch.equal(stacked, one_by_one)
    assert letterbox_crops(image, [], 32, stacked[:0]) == []
    whole = torch.full((3, 32, 32), 114.0)
    assert letterbox(image, 32, whole) == 32 / 90 and whole[:, 22:].eq(114.0).all()  # 60 rows to 21: pad below


def test_queueing_puts_results_back_in_place() -> None:
    images = ["a", "b", "c", "d"]
    groups = [[2, 0], [3]]  # "b" is in no group: it gets empty detections
    found = {name: Detections(scores=np.array([0.5], np.float32)) for name in images}
    log: list[str] = []

    def run(batch: list[str]) -> list[Detections]:
        return [found[name] for name in batch]

    def forward(batch: list[str]) -> Callable[[], list[Detections]]:
        log.append(f"queue {''.join(batch)}")

        def finish() -> list[Detections]:
            log.append(f"finish {''.join(batch)}")
            return run(batch)

        return finish

    def check(results: list[Detections]) -> None:
        assert [results[i] is found[name] for i, name in enumerate(images)] == [True, False, True, True]
        assert len(results[1].scores) == 0 and results[1].boxes.shape == (0, 4)

    check(run_batches(images, groups, run))
    finish = submit_batches(images, groups, forward)
    assert log == ["queue ca", "queue d"]  # all the work is queued before any of it is finished
    check(finish())
    assert log[2:] == ["finish ca", "finish d"]
    assert [len(d.scores) for d in in_place(2, [])] == [0, 0]
