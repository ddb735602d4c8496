"""microkit's version, written into every manifest and bundle."""

__version__ = "0.1.0"
