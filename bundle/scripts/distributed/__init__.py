# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Multi-GPU and multi-node training (``configs/multi_gpu_train.yaml``, launched with ``torchrun``).

Modules (imported by their full names; this package imports nothing itself, so that the training
methods can use :mod:`.module_broadcast` without importing the engine):

- :mod:`.process_group`: ``DistributedSetup`` joins the process group and picks the device.
- :mod:`.rank_zero_handlers`: ``handlers_for_rank`` keeps output-only handlers on rank 0.
- :mod:`.sampler_reshuffle`: ``ReshuffleDistributedSampler``, a new sampler order at every pass.
- :mod:`.module_broadcast`: rank 0's module state or object on every rank.
"""
