"""`libos bench`'s report: `measure` (the sections, each beside its same-run baselines),
`peers` (the others measured beside libos, or tried and found not runnable offline), `rows`
(the goals table), `plots`, `write` (report.md, report.json, the PNGs), `run` (the sections
with progress) and `readme` (the README's table, made from a report)."""
