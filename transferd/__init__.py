"""transferd: a large-dataset transfer orchestrator for research storage federations."""

__version__ = "0.1.0"
