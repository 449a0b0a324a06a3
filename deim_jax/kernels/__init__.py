"""Native CPU kernels that XLA calls through its FFI: oneDNN convolutions (``onednn``), the
kernels PyTorch uses on CPU. Optional: built on first use where a C++ compiler and oneDNN's
headers are found, otherwise the models keep XLA's own operations."""
