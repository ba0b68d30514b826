"""Test-suite settings: the tests' tensors are tiny, and one thread runs them fastest and immune
to OpenMP stalls when the machine is busy."""

import torch

torch.set_num_threads(1)
