"""The discrete-event cluster simulator (DESIGN.md section 5, part 2).

Parts: `events` (the loop), `link` (processor-sharing links with two priority classes),
`hardware` and `model_cost` (presets and roofline costs), `ratio` (the cache-compute
ratio), `cluster` (engine/node state), `simulator` (the event handlers, driven by the pure
`dualpath.scheduler`), `api` (entry points used by the CLI and the benchmark driver).
Importing this package never imports torch.
"""
