"""Semantic and instance segmentation, one skeleton: ``data`` (mask folders and datasets),
``models`` (smp models on the offline Lite0 encoder) and ``unet`` (the course's own U-Net),
``losses`` (Dice, CE + Dice), ``steps`` (prediction and the mIoU validator for the engine),
``metrics`` (IoU / Dice per class), ``instances`` (instance masks from COCO files)."""
