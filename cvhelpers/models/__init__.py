"""Models shared by every task: the small CNN (``cnn``), the offline ImageNet weights
(``pretrained``) and switching parts of a model off and on (``freezing``: eval mode, frozen
BatchNorm, layer groups)."""
