"""The one training engine: ``engine.fit`` runs every training in the course, extended by small
per-task step functions (``steps``) and validators. ``loop`` is one epoch of steps,
``evaluate`` runs a model without training it, ``checkpoint`` makes runs resumable,
``distributed`` runs them on several processes, ``schedules`` are learning-rate shapes over a
run's progress, ``speed`` measures how fast training goes."""
