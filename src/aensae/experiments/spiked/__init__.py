"""The synthetic grid of ``aensae reproduce`` (spiked dictionaries with known answers), and
the single runs behind ``aensae train`` and ``aensae geometry``."""
