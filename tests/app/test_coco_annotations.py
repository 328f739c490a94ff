"""COCO documents as pycocotools reads them: annotation ids 1..n (COCOeval takes an id of
0 for "unmatched"), non-crowd annotations, category names for classes past the model's
list, counts strings of exactly four runs (the first with a run-to-run difference), compact
text, and the refusal of a run the string encoding cannot hold."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from app.imaging.masks.coco import coco_document, coco_entries, counts_string

coco_api = pytest.importorskip("pycocotools.coco")
mask_api = pytest.importorskip("pycocotools.mask")


def loaded(labels: np.ndarray, classes: list[str]) -> Any:
    coco = coco_api.COCO()
    coco.dataset = json.loads(coco_document(labels, classes, {"model": {"name": "m"}}))
    coco.createIndex()
    return coco


def test_pycocotools_reads_numbered_non_crowd_annotations() -> None:
    labels = np.array([[0, 0, 3], [2, 3, 3]], np.uint8)  # class 1 absent
    coco = loaded(labels, ["sky", "tree", "road", "car"])
    assert coco.getAnnIds() == [1, 2, 3]
    # Every class region is an object of its own, not a crowd: evaluation matches it.
    assert coco.getAnnIds(iscrowd=False) == [1, 2, 3]
    assert coco.getAnnIds(iscrowd=True) == []
    expected = {1: (0, "sky", 2, [0, 0, 2, 1]), 2: (2, "road", 1, [0, 1, 1, 1]),
                3: (3, "car", 3, [1, 0, 2, 2])}  # fmt: skip
    for ann in coco.loadAnns(coco.getAnnIds()):
        category, name, area, bbox = expected[ann["id"]]
        assert (ann["category_id"], ann["image_id"], ann["area"], ann["bbox"]) == (
            category, 1, area, bbox
        )  # fmt: skip
        assert coco.loadCats(category)[0]["name"] == name == ann["category_name"]
        assert np.array_equal(coco.annToMask(ann), (labels == category).astype(np.uint8))


def test_classes_past_the_names_are_named_by_their_index() -> None:
    entries = coco_entries(np.array([[0, 1, 2]], np.uint8), ["only"])
    assert [e["category_name"] for e in entries] == ["only", "1", "2"]


def test_four_runs_encode_as_pycocotools_does() -> None:
    # Column by column, class 1 of the 2x2 map is 1 0 0 1: runs 0, 1, 2, 1, the 4th written
    # as its difference from the 2nd (class 0: runs 1, 2, 1); in the 2x3 map class 1 has
    # the runs 0, 1, 2, 1, 2 and class 2 the runs 4, 2.
    for labels in (np.array([[1, 0, 2], [0, 1, 2]], np.uint8), np.array([[1, 0], [0, 1]])):
        for entry in coco_entries(labels.astype(np.uint8), ["a", "b", "c"]):
            mask = labels == entry["category_id"]
            expected = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert entry["segmentation"]["counts"] == expected["counts"].decode()


def test_the_document_is_compact() -> None:
    labels = np.array([[0, 1], [1, 1]], np.uint8)
    body = coco_document(labels, ["a", "b"], {"model": {"name": "m", "version": "1"}})
    assert b" " not in body and b"\n" not in body
    assert len(json.loads(body)["annotations"]) == 2


def test_a_run_past_seven_groups_is_refused() -> None:
    counts_string(np.array([0, 2**34 - 1]))  # 35 bits with the sign: the most that fits
    with pytest.raises(ValueError, match=r"^a run too long for the COCO string encoding$"):
        counts_string(np.array([0, 2**34]))
