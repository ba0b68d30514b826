"""Test-suite settings: small CPU workloads run fastest (and predictably) on one thread."""

import torch

torch.set_num_threads(1)
