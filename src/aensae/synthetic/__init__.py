"""Synthetic ground truth: correlated dictionaries, sparse codes, signal streams, diagnostics.

- :mod:`~aensae.synthetic.dictionaries` -- :func:`spiked_dictionary` (one shared spike),
  :func:`multi_spike_dictionary`, :func:`block_dictionary`; all return a
  :class:`SyntheticDictionary` (atoms as unit-norm columns, plus the shared directions).
- :mod:`~aensae.synthetic.codes` -- :func:`sample_codes`, :func:`sample_supports`:
  exactly ``k`` non-zeros per code on a uniform support, magnitudes ``U[lo, hi]``.
- :mod:`~aensae.synthetic.stream` -- :class:`SyntheticStream` (random-access, resumable
  numpy / torch batches) and :func:`sample_signals`.
- :mod:`~aensae.synthetic.diagnostics` -- coherence, active Gram spectrum, irrepresentable
  condition, :func:`dictionary_diagnostics`.

This package imports only :mod:`aensae._validation` from aensae.
"""

from aensae.synthetic.codes import sample_codes, sample_supports
from aensae.synthetic.diagnostics import (
    active_gram_stats,
    coherence,
    dictionary_diagnostics,
    irrepresentable,
    irrepresentable_stats,
)
from aensae.synthetic.dictionaries import (
    SyntheticDictionary,
    block_dictionary,
    multi_spike_dictionary,
    spiked_dictionary,
)
from aensae.synthetic.stream import SyntheticStream, sample_signals

__all__ = [
    "SyntheticDictionary",
    "SyntheticStream",
    "active_gram_stats",
    "block_dictionary",
    "coherence",
    "dictionary_diagnostics",
    "irrepresentable",
    "irrepresentable_stats",
    "multi_spike_dictionary",
    "sample_codes",
    "sample_signals",
    "sample_supports",
    "spiked_dictionary",
]
