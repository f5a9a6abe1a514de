"""Packaging for ktls_ossl.

The extension ``ktls_ossl._ossl`` is built by cffi in API mode from ``cffi_build/``
against the system's OpenSSL 3 (Debian: libssl-dev) and <linux/tls.h>.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    """``__version__`` from ktls_ossl/_version.py, read without importing ktls_ossl (which needs the
    extension this setup.py is about to build)."""
    namespace = {}
    with open(os.path.join(HERE, "ktls_ossl", "_version.py"), encoding="utf-8") as source:
        exec(source.read(), namespace)
    return namespace["__version__"]


setup(
    name="ktls_ossl",
    version=read_version(),
    description="Linux kernel TLS for Python, with OpenSSL 3 doing the handshake",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["ktls_ossl", "ktls_ossl.*"]),
    package_data={"ktls_ossl": ["py.typed"]},  # PEP 561: the package's annotations are for type checkers
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15", "cryptography>=41"],
    extras_require={
        # pyOpenSSL 23.2.0 is the oldest whose cryptography requirement (<42) meets the project's (>=41).
        "pyopenssl": ["pyOpenSSL>=23.2.0"],
        # ktls_ossl.asyncio needs nothing more; its tests run it under the frameworks (uvicorn 0.54
        # brought ssl_context_factory) and against aiofastnet (the bench's asyncio contender).
        "test": ["pytest>=7", "pytest-timeout>=2.1", "pyOpenSSL>=23.2.0", "aiohttp>=3.9", "uvicorn>=0.54",
                 "httpx>=0.27", "uvloop>=0.19", "aiofastnet>=1.2"],
        "bench": ["matplotlib>=3.5", "aiofastnet>=1.2", "uvloop>=0.19"],  # the PNG chart; asyncio contenders
    },
    cffi_modules=["cffi_build/build_ossl.py:ffibuilder"],
    entry_points={"console_scripts": ["ktls-ossl=ktls_ossl.__main__:main"]},
    classifiers=[
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Security :: Cryptography",
        "Topic :: System :: Networking",
    ],
    zip_safe=False,
)
