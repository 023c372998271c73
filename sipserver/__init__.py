"""sipserver: a SIP softswitch-style server for realtime AI voice agents."""

__version__ = "0.1.0"
