"""provisor: provenance collected from the hypervisor, kept through crashes."""

__version__ = "0.1.0"
