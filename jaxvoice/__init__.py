"""jaxvoice: teach recurrent networks raw audio as streams of 256 byte symbols."""

__version__ = "0.1.0"
