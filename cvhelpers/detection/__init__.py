"""Object detection, one skeleton: ``data`` (datasets for torchvision detectors), ``models``
(Faster / Mask R-CNN on the Lite0 backbone), ``steps`` (the training step and the mAP validator
for the engine), ``metrics`` and ``coco_eval`` (AP and COCO mAP), and the mechanisms inside a
detector: ``boxes`` (IoU, box coding, NMS), ``anchors``, ``losses`` (focal loss). ``analysis``
explains errors, ``yolo`` runs Ultralytics YOLO, ``detectron2`` converts data for Detectron2."""
