"""What the synthetic and the LLM grids share: config reading and hashing, the results
table, the calibration search, the output-folder layout and manifest, plotting helpers,
thread limits and the executors. The grids themselves are :mod:`aensae.experiments.spiked`
and :mod:`aensae.experiments.llm`; the shared modules import neither.
"""
