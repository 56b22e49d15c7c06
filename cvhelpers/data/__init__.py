"""Data the course reads and writes: file formats with their checks (``validate``, ``coco``,
``yolo``, ``imagefolder``), the offline datasets (``fashion_mnist``, ``photos``, ``scenes``,
``prepare``) and repeatable loading (``loading``: seeds, seeded loaders, per-worker seeding)."""
