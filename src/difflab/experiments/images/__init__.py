"""The ``images`` run kind: UNet diffusion on image sets (bundled digits, or local MNIST / Fashion-MNIST /
CIFAR-10 files), validation and early stopping, FID / KID / IS with the held-out floor, bits/dim.

Modules, lowest first: ``config`` <- ``evaluate`` <- ``train`` <- ``run`` <- ``report`` <- ``kind``. A run
directory holds ``config.json`` (with ``kind = "images"``), ``checkpoint.pt``, ``log.csv``, ``grids/``,
``history.json``, ``samples.npz``, ``samples.png`` and ``metrics.json``. Seeds: training draws from
(train.seed, step); sampling batch j from (eval.seed, j), so changing ``eval.batch`` changes the samples."""
