"""Real photos that ship inside installed packages: no download, no data folder needed.

Sources: scikit-image (``skimage.data``'s bundled files), scikit-learn (``load_sample_images``),
matplotlib (``cbook.get_sample_data``), ultralytics (``ultralytics/assets``, found by path: the
package is never imported, because importing it changes torch's thread count) and, where the
Debian package ``opencv-doc`` is installed, OpenCV's sample photos.

Photos of a single ImageNet-1k object carry the set of class indices a person would accept as
correct (a tabby cat accepts tabby, tiger cat and Egyptian cat), so a pretrained classifier can
be checked on real data.

>>> from cvhelpers.data.photos import list_photos, load_photo
>>> [p.name for p in list_photos()][:3]                      # doctest: +SKIP
['astronaut', 'camera', 'chelsea']
>>> load_photo("chelsea").shape
(300, 451, 3)
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Where Debian's ``opencv-doc`` puts OpenCV's ``samples/data`` folder.
OPENCV_DOC_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
_OPENCV_UPSTREAM = "https://github.com/opencv/opencv/raw/4.x/samples/data/"

_CC0 = "CC0 / no known copyright restrictions (per skimage.data)"
_PUBLIC_DOMAIN = "public domain (per skimage.data)"
_OPENCV = ("OpenCV samples/data (Apache-2.0 AND BSD-3-Clause per Debian; "
           "the images' own provenance is not stated)")


@dataclass(frozen=True)
class Photo:
    """One catalogued photo.

    Attributes:
        name: the key for :func:`load_photo`.
        description: what is in the picture.
        package: where it comes from: a Python package name, or ``"opencv-doc"`` (Debian).
        relative_path: the file inside that package (or inside :data:`OPENCV_DOC_DATA`).
        licence: the licence / source note.
        imagenet_classes: ImageNet-1k indices a person would accept as the photo's label, or
            ``None`` where no single ImageNet class fits.
        how_to_get: what to install when the file is missing.
    """

    name: str
    description: str
    package: str
    relative_path: str
    licence: str
    imagenet_classes: frozenset[int] | None
    how_to_get: str

    def path(self) -> Path | None:
        """The file on this machine, or ``None`` when its package is not installed."""
        if self.package == "opencv-doc":
            candidate = OPENCV_DOC_DATA / self.relative_path
        else:
            # find_spec locates a top-level package without importing (running) it.
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                return None
            candidate = Path(list(spec.submodule_search_locations)[0]) / self.relative_path
        return candidate if candidate.is_file() else None

    @property
    def available(self) -> bool:
        """True when the photo's file is on this machine."""
        return self.path() is not None

    def load(self) -> np.ndarray:
        """The photo as an ``H x W x 3`` uint8 RGB array (grayscale is repeated on 3 channels)."""
        path = self.path()
        if path is None:
            raise FileNotFoundError(
                f"photo {self.name!r} ({self.relative_path} from {self.package}) is not on this "
                f"machine: {self.how_to_get}"
            )
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _skimage(name: str, file: str, description: str, licence: str,
             classes: set[int] | None = None) -> Photo:
    return Photo(name, description, "skimage", f"data/{file}", licence,
                 frozenset(classes) if classes else None, "pip install scikit-image")


def _opencv(name: str, file: str, description: str, classes: set[int] | None = None) -> Photo:
    return Photo(name, description, "opencv-doc", file, _OPENCV,
                 frozenset(classes) if classes else None,
                 f"apt-get install opencv-doc (Debian/Ubuntu), or save {_OPENCV_UPSTREAM}{file} "
                 f"into {OPENCV_DOC_DATA}")


# ImageNet-1k indices used below (names from timm.data.ImageNetInfo).
_CATALOGUE: tuple[Photo, ...] = (
    _skimage("astronaut", "astronaut.png", "NASA portrait of astronaut Eileen Collins",
             _PUBLIC_DOMAIN),
    # 872 tripod (the camera itself is a cine camera, not a reflex one)
    _skimage("camera", "camera.png", "grayscale: a man filming with a camera on a tripod", _CC0,
             {872}),
    # 281 tabby, 282 tiger cat, 285 Egyptian cat
    _skimage("chelsea", "chelsea.png", "Chelsea the tabby cat", _CC0, {281, 282, 285}),
    # 967 espresso, 968 cup, 504 coffee mug
    _skimage("coffee", "coffee.png", "a cup of espresso on a saucer", _CC0, {967, 968, 504}),
    _skimage("coins", "coins.png", "grayscale: Greek coins from Pompeii (Brooklyn Museum)",
             "no known copyright restrictions (per skimage.data)"),
    _skimage("hubble_deep_field", "hubble_deep_field.jpg", "Hubble eXtreme Deep Field",
             _PUBLIC_DOMAIN),
    _skimage("immunohistochemistry", "ihc.png", "IHC-stained colonic glands (microscopy)",
             "no known copyright restrictions (per skimage.data)"),
    # ImageNet-1k has moped and motor scooter but no motorcycle: no class set.
    _skimage("motorcycle", "motorcycle_left.png", "left view of a stereo pair: a motorcycle",
             "Middlebury 2014 stereo benchmark (per skimage.data, which states no licence)"),
    _skimage("retina", "retina.jpg", "fundus photograph of a human retina", _CC0),
    _skimage("rocket", "rocket.jpg", "Falcon 9 launching DSCOVR (SpaceX)", _PUBLIC_DOMAIN),
    # The Summer Palace, Beijing: "palace" is arguable, so no class set.
    Photo("china", "a pagoda-like tower above a lake (Summer Palace, Beijing)", "sklearn",
          "datasets/images/china.jpg",
          "CC BY 2.0, danielbuechele on Flickr (per sklearn's README)", None,
          "pip install scikit-learn"),
    # A dahlia: ImageNet-1k has daisy but no dahlia, so no class set.
    Photo("flower", "an orange dahlia", "sklearn", "datasets/images/flower.jpg",
          "CC BY 2.0, vultilion on Flickr (per sklearn's README)", None,
          "pip install scikit-learn"),
    # 652 military uniform (Lite0's top-1 here is "academic gown": a real, honest miss)
    Photo("grace_hopper", "portrait of Rear Admiral Grace Hopper in Navy uniform", "matplotlib",
          "mpl-data/sample_data/grace_hopper.jpg", "public domain (official US Navy photo)",
          frozenset({652}), "pip install matplotlib"),
    # 654 minibus, 874 trolleybus: ImageNet-1k has no plain "bus"; its city buses are filed
    # under trolleybus, and this small electric one fits minibus (779 school bus would not fit).
    Photo("bus", "a small electric city bus in a street with pedestrians", "ultralytics",
          "assets/bus.jpg", "shipped in the ultralytics wheel (AGPL-3.0 package)",
          frozenset({654, 874}), "pip install ultralytics"),
    # 834 suit, 906 Windsor tie
    Photo("zidane", "two men in suits and ties", "ultralytics", "assets/zidane.jpg",
          "shipped in the ultralytics wheel (AGPL-3.0 package)", frozenset({834, 906}),
          "pip install ultralytics"),
    # 950 orange
    _opencv("orange", "orange.jpg", "an orange", {950}),
    # 335 fox squirrel (ImageNet-1k's only squirrel)
    _opencv("squirrel", "squirrel_cls.jpg", "a squirrel on a branch", {335}),
    # 372 baboon: ImageNet-1k has no mandrill; baboon is its closest class (and the file's name)
    _opencv("baboon", "baboon.jpg", "the classic mandrill face test image", {372}),
    # ImageNet-1k's only apple is 948 Granny Smith, a green one: no class set.
    _opencv("apple", "apple.jpg", "a red apple"),
    # No swallowtail among ImageNet-1k's six butterflies: no class set.
    _opencv("butterfly", "butterfly.jpg", "a swallowtail butterfly on a leaf"),
    # 950 orange, 951 lemon: the two largest fruits in the picture
    _opencv("fruits", "fruits.jpg", "cut orange, lemon, lime and kiwi", {950, 951}),
    # 805 soccer ball: the only ImageNet-1k object in the picture
    _opencv("messi", "messi5.jpg", "a footballer about to kick a ball", {805}),
    # Breed unknown: the long-haired toy breeds it resembles, 152 Japanese spaniel,
    # 154 Pekinese, 155 Shih-Tzu, 204 Lhasa, 262 Brabancon griffon
    _opencv("chicky", "chicky_512.png", "a small long-haired dog", {152, 154, 155, 204, 262}),
)
_BY_NAME = {photo.name: photo for photo in _CATALOGUE}


def list_photos(available_only: bool = True) -> list[Photo]:
    """The catalogue, in a fixed order; by default only the photos present on this machine."""
    return [p for p in _CATALOGUE if p.available or not available_only]


def get_photo(name: str) -> Photo:
    """The catalogue entry called ``name`` (available or not).

    Raises:
        KeyError: for an unknown name; the message suggests the closest known names.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        close = difflib.get_close_matches(name, _BY_NAME, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown photo {name!r}.{hint} Known: {', '.join(_BY_NAME)}") from None


def load_photo(name: str) -> np.ndarray:
    """Load a catalogued photo as an ``H x W x 3`` uint8 RGB array.

    Raises:
        KeyError: unknown name.
        FileNotFoundError: the photo's package is not installed; the message says what to install.
    """
    return get_photo(name).load()
