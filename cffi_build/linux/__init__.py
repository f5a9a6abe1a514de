"""Kernel headers: the kTLS uapi, compiled in so that the compiler checks struct sizes."""
