"""The server package's import name (sessionkit_server) differs from its folder (services/), which
the design keeps; setuptools maps one onto the other here, the rest is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

subpackages = [p for p in find_namespace_packages("services") if "__pycache__" not in p]
setup(
    packages=["sessionkit_server", *(f"sessionkit_server.{p}" for p in subpackages)],
    package_dir={"sessionkit_server": "services"},
)
