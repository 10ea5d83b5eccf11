# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Multi-GPU and multi-node training (``configs/multi_gpu_train.yaml``, launched with ``torchrun``).

Modules (imported by their full names; this package imports nothing itself):

- :mod:`.process_group`: ``DistributedSetup`` joins the process group and picks the device.
- :mod:`.rank_zero_handlers`: ``handlers_for_rank`` keeps output-only handlers on rank 0.
- :mod:`.sampler_reshuffle`: ``ReshuffleDistributedSampler``, a new sampler order at every pass.

Broadcasting rank 0's module state to every rank, which the training methods need, is
:mod:`scripts.engine.module_broadcast`: the methods sit below this package and may not import it.
"""
