"""Re-save a checkpoint written by an older train_example.py whose meta held a TorchVersion object.

Older runs stored `torch.__version__` (a str subclass) in 'meta', which weights_only loading refuses.
This loads our own file with full unpickling once and writes the same tensors with plain-str meta.
"""

import sys

import torch

path = sys.argv[1]
ck = torch.load(path, map_location="cpu", weights_only=False)
ck["meta"] = {k: (str(v) if not isinstance(v, (int, float, bool)) else v) for k, v in ck["meta"].items()}
torch.save(ck, path + ".tmp")
import os  # noqa: E402

os.replace(path + ".tmp", path)
torch.load(path, map_location="cpu", weights_only=True)
print("ok", path)
