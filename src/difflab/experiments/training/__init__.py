"""Training shared by every run kind: the Trainer (common random numbers per step, EMA, exact resume;
``trainer``), validation and early stopping (``validation``), torchrun / DDP helpers (``dist``).
No module here imports a run kind or its config (the Trainer reads a ``TrainerSettings`` protocol)."""
