"""Packaging for ktls_ossl.

The extension ``ktls_ossl._ossl`` is built by cffi in API mode from ``cffi_build/``
against the system's OpenSSL 3 (Debian: libssl-dev) and <linux/tls.h>.
"""
from setuptools import find_packages, setup

setup(
    name="ktls_ossl",
    version="0.1.0",
    description="Linux kernel TLS for Python, with OpenSSL 3 doing the handshake",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ktls_ossl", "ktls_ossl.*"]),
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15", "cryptography>=41"],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2.1"],
        "bench": ["matplotlib>=3.5"],  # the PNG chart of `python -m ktls_ossl bench` (optional)
    },
    cffi_modules=["cffi_build/build_ossl.py:ffibuilder"],
    entry_points={"console_scripts": ["ktls-ossl=ktls_ossl.__main__:main"]},
    classifiers=[
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: Security :: Cryptography",
        "Topic :: System :: Networking",
    ],
    zip_safe=False,
)
