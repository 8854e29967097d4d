"""Test-wide settings.

Tests use tiny models, for which a second intra-op thread gains nothing and, on a 2-core
machine shared with other work, OpenMP thread contention can slow a step by 100x.
"""

import torch

torch.set_num_threads(1)
