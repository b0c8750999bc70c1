"""arrowtrain data tools: byte-level BPE training and Arrow IPC token shards.

Only stdlib, pyarrow, tokenizers, numpy, pydantic, zstandard and tqdm are imported here; never
torch.
"""

__version__ = "0.1.0"
