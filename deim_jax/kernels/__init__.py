"""Native CPU kernels that XLA calls through its FFI: oneDNN convolutions (``onednn``), the
kernels PyTorch uses on CPU, and deformable attention's weighted sums of gathered rows
(``gather_sum``). Optional: built on first use (``native``) where a C++ compiler (and, for
``onednn``, oneDNN's headers) are found, otherwise the models keep XLA's own operations."""
