"""Augmentation: presets in torchvision v2 and albumentations 2.x (``presets``) and the extra
steps they need (``ops``). Boxes and masks move with their images."""
