"""The registry's errors: each is one line naming the family, the version and what to do."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry change or read cannot be made; the one-line message names family and version."""


class NameError_(RegistryError, ValueError):  # noqa: N801 - `NameError` is a builtin
    """Not a family or version name."""


class LifecycleError(RegistryError):
    """A state change the lifecycle does not allow."""


class VersionFilesError(RegistryError):
    """A version's files are missing, incomplete or altered."""


class ModelRegistryError(RegistryError):
    """MLflow's model registry could not be updated or read (the tracking URI and why)."""
