"""longscale: turn long documents into long-context instruction data, and short-context models into long ones."""
__version__ = "0.1.0"
