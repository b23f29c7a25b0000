"""mlctl: deploy frontier open-weight models to rented GPU boxes."""

__version__ = "0.1.0"
