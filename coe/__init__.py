"""coe: a collaboration of forensic experts that tells real images from AI-generated ones."""

__version__ = "0.1.0"
