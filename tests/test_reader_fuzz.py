"""Structure-aware fuzz of the dataset readers: valid files with wrong values and wrong types.

Each case starts from a small valid COCO file (or YOLO label file), replaces one field with a
wrong value and reads it. The only exception a reader may raise is ``DatasetError``; the
process must survive (pycocotools' C code once died on a huge RLE size) and stay under a
memory limit, so the loop runs in a child process with ``RLIMIT_AS`` set.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("pycocotools")
resource = pytest.importorskip("resource")  # POSIX only

# Address space for the child: numpy + PIL + pycocotools fit in well under this; a 64x48 image
# decoded with a 1048576 x 1048576 size would not.
LIMIT_BYTES = 1_500_000_000
CASES = 400

CHILD = textwrap.dedent(
    r"""
    import copy, json, random, resource, sys, traceback
    from pathlib import Path

    import numpy as np
    from PIL import Image

    resource.setrlimit(resource.RLIMIT_AS, (__LIMIT__, __LIMIT__))
    from cvhelpers.data.coco import read_coco
    from cvhelpers.data.validate import DatasetError
    from cvhelpers.data.yolo import read_yolo

    root = Path(sys.argv[1]); rng = random.Random(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / "images" / "a.png")
    base = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "iscrowd": 0,
             "area": 120, "segmentation": [[2, 3, 12, 3, 12, 15, 2, 15]]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 10, 4, 4], "iscrowd": 1,
             "area": 16, "segmentation": {"size": [48, 64], "counts": [0, 3072]}},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [30, 20, 5, 5], "iscrowd": 0,
             "area": 25, "segmentation": {"size": [48, 64], "counts": "d]15[10000000lZ1"}},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    WRONG = [None, True, -1, 0, 1.5, 1e12, -1e12, 2**40, 2**70, float("nan"), "", "x", "12",
             [], [1], [1, 2, 3, 4], [[1, 2]], {}, {"a": 1}, [1048576, 1048576], [0, 2**33],
             "\u00ff\u00ff", "zzzzzzzzzzzz", "oooooooooooo", "0" * 20]

    def paths(obj, prefix=()):
        yield prefix
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                yield from paths(v, prefix + (i,))

    all_paths = [p for p in paths(base) if p]
    json_path = root / "annotations.json"
    escaped = []
    json_path.write_text(json.dumps(base)); read_coco(json_path, root / "images")  # the base is valid
    for case in range(__CASES__):
        coco = copy.deepcopy(base)
        for _ in range(rng.choice([1, 1, 2])):
            path = rng.choice(all_paths)
            node = coco
            try:
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = copy.deepcopy(rng.choice(WRONG))
            except (KeyError, IndexError, TypeError):
                pass
        json_path.write_text(json.dumps(coco))
        try:
            read_coco(json_path, root / "images")
        except DatasetError:
            pass
        except BaseException as error:
            escaped.append(f"COCO case {case}: {type(error).__name__}: {error} <- {json.dumps(coco)[:300]}")

    (root / "yolo" / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "yolo" / "labels" / "train").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / "yolo" / "images" / "train" / "a.png")
    (root / "yolo" / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [a, b]\n")
    rows = ["0 0.5 0.5 0.2 0.2", "1 0.1 0.1 0.3 0.1 0.2 0.3"]
    tokens = ["nan", "inf", "-1", "2", "1e12", "0x10", "", "a", "0.5", "1", "0", "1.5", "99999999999999999999"]
    for case in range(__CASES__ // 2):
        row = rng.choice(rows).split()
        for _ in range(rng.choice([1, 2])):
            row[rng.randrange(len(row))] = rng.choice(tokens)
        if rng.random() < 0.2:
            row = row[: rng.randrange(len(row))]
        (root / "yolo" / "labels" / "train" / "a.txt").write_text(" ".join(row) + "\n")
        try:
            read_yolo(root / "yolo" / "data.yaml", "train")
        except DatasetError:
            pass
        except BaseException as error:
            escaped.append(f"YOLO case {case}: {type(error).__name__}: {error} <- {' '.join(row)!r}")
    print(json.dumps(escaped))
    """
)


def test_only_dataset_errors_come_out_of_the_readers(tmp_path):
    code = CHILD.replace("__LIMIT__", str(LIMIT_BYTES)).replace("__CASES__", str(CASES))
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"the reader process died (rc {done.returncode}):\n{done.stderr[-3000:]}"
    escaped = json.loads(done.stdout.strip().splitlines()[-1])
    assert not escaped, "\n".join(escaped[:10])


@pytest.mark.parametrize("segmentation, message", [
    ({"size": [1048576, 1048576], "counts": "d]15[10000000lZ1"}, "does not match the image size"),
    ([[1e12, 0, 10, 0, 10, 10]], "outside the 64x48 image"),
    ({"size": [48, 64], "counts": [2**40, 5]}, "RLE counts must be integers"),
    ({"size": [48, 64], "counts": [10, 5]}, "add up to 15 pixels"),
    ({"size": [48, 64], "counts": "oooooooooooo"}, "beyond 32 bits"),
])
def test_the_dangerous_segmentations_are_named_before_decoding(tmp_path, segmentation, message):
    # in a child process: before the fix, the first two killed the process that read them
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12],
                             "segmentation": segmentation}],
            "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))
        import numpy as np
        from PIL import Image
        from cvhelpers.data.coco import read_coco
        from cvhelpers.data.validate import DatasetError
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(sys.argv[1] + "/a.png")
        try:
            read_coco(sys.argv[1] + "/c.json")
        except DatasetError as error:
            print(error)
    """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the reader process died (rc {done.returncode}):\n{done.stderr[-2000:]}"
    error = done.stdout.strip()
    assert error.startswith(str(tmp_path / "c.json")) and "annotation id 7" in error, error
    assert message in error, error


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["images"].__setitem__(0, "a.png"), r"images\[0\] is a str"),
    (lambda c: c["annotations"][0].__setitem__("bbox", ["1", 2, 3, 4]), "four numbers"),
    (lambda c: c["annotations"][0].__setitem__("segmentation", [1.5]), "not a list of numbers"),
    (lambda c: c["categories"][0].__setitem__("id", 1.5), "integer id"),
    (lambda c: c["images"][0].__setitem__("width", [64]), "size"),
])
def test_wrong_types_become_named_errors(tmp_path, mutate, message):
    import numpy as np
    from PIL import Image

    from cvhelpers.data.coco import read_coco
    from cvhelpers.data.validate import DatasetError

    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12],
                             "segmentation": [[2, 3, 12, 3, 12, 15]]}],
            "categories": [{"id": 1, "name": "a"}]}
    mutate(coco)
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=message):
        read_coco(tmp_path / "c.json")
