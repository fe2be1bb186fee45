"""streetlib: reproduce, question and extend the VGG16-Street10 street-image study."""

__version__ = "0.1.0"
