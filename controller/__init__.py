"""rayop: a Kubernetes operator that runs Ray clusters natively on Kubernetes."""

__version__ = "0.1.0"
