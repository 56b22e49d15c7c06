"""vote_regions: regions checked against scipy.ndimage.label, votes against a plain count."""

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from cvhelpers.segmentation.postprocess import vote_objects, vote_regions


def _reference_vote(mask: np.ndarray, background: int, connectivity: int) -> np.ndarray:
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    regions, count = ndimage.label(mask != background, structure=structure)
    out = mask.copy()
    for r in range(1, count + 1):
        counts = Counter(mask[regions == r].tolist())
        best = max(counts.values())
        out[regions == r] = min(c for c, n in counts.items() if n == best)
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vote_regions_matches_scipy_labelled_reference(seed, connectivity):
    rng = np.random.default_rng(seed)
    foreground = ndimage.binary_opening(rng.random((48, 64)) < 0.55)  # blobs of several sizes
    mask = np.where(foreground, rng.integers(1, 6, (48, 64)), 0).astype(np.uint8)
    voted = vote_regions(mask, connectivity=connectivity)
    np.testing.assert_array_equal(voted, _reference_vote(mask, 0, connectivity))
    assert voted.dtype == mask.dtype and (voted[mask == 0] == 0).all()


def test_vote_regions_regions_and_ties():
    # two blocks touching only at a corner: one region with 8-connectivity, two with 4
    mask = np.zeros((6, 6), np.int64)
    mask[0:2, 0:2] = [[1, 1], [1, 2]]
    mask[2:4, 2:4] = 3
    np.testing.assert_array_equal(vote_regions(mask, connectivity=4)[2:4, 2:4], 3)
    assert (vote_regions(mask, connectivity=4)[0:2, 0:2] == 1).all()
    assert (vote_regions(mask, connectivity=8)[mask > 0] == 3).all()  # 4 pixels of 3 beat 3 of 1
    tie = np.array([[2, 5, 0, 0]], np.uint8)
    np.testing.assert_array_equal(vote_regions(tie), [[2, 2, 0, 0]])  # a tie goes to the smaller id


def test_vote_regions_other_background_and_stacks():
    mask = np.array([[0, 0, 9], [1, 0, 9]], np.int32)
    # with 9 as the background, 0 and 1 form one region and 0 wins it
    np.testing.assert_array_equal(vote_regions(mask, background=9), [[0, 0, 9], [0, 0, 9]])
    stack = np.stack([mask, np.zeros_like(mask)])
    np.testing.assert_array_equal(vote_regions(stack), np.stack([vote_regions(mask), np.zeros_like(mask)]))
    assert vote_regions(np.zeros((0, 4, 4), np.uint8)).shape == (0, 4, 4)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.float32), "integer class ids"),
    (np.zeros((4,), np.uint8), "H x W or N x H x W"),
    (np.full((2, 2), -1, np.int64), ">= 0"),
])
def test_vote_regions_refuses_bad_masks(bad, message):
    with pytest.raises(ValueError, match=message):
        vote_regions(bad)
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        vote_regions(np.zeros((2, 2), np.uint8), connectivity=6)


def test_vote_objects_votes_inside_each_object_only():
    mask = np.array([[1, 2, 2, 0],
                     [1, 0, 3, 3],
                     [4, 4, 4, 3]], np.uint8)
    first = np.zeros_like(mask, bool); first[0, :3] = True; first[1, 0] = True   # 1, 2, 2, 1: a tie, 1 wins
    second = np.zeros_like(mask, bool); second[1:, 1:] = True                    # background, 3, 3, 4, 4, 3
    voted = vote_objects(mask, [first, second])
    np.testing.assert_array_equal(voted, [[1, 1, 1, 0],
                                          [1, 0, 3, 3],
                                          [4, 3, 3, 3]])  # (2, 0) is in no object: unchanged
    assert voted.dtype == mask.dtype and vote_objects(mask, []).tolist() == mask.tolist()
    # an object the prediction missed entirely changes nothing
    empty = np.zeros_like(mask, bool); empty[0, 3] = True
    np.testing.assert_array_equal(vote_objects(mask, [empty]), mask)


def test_vote_objects_refuses_mismatched_masks():
    with pytest.raises(ValueError, match="object mask 1 is \\(2, 2\\)"):
        vote_objects(np.zeros((3, 3), np.uint8), [np.zeros((3, 3), bool), np.zeros((2, 2), bool)])
    with pytest.raises(ValueError, match="integer H x W"):
        vote_objects(np.zeros((3, 3), np.float32), [])
