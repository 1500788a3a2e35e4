"""Running built models on the host: open a cvimodel through its build manifest, make its input
tensors, run it on the CV18xx simulator or the fast path, and the fp32 reference."""
