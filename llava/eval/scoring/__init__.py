"""Benchmark scorers and submission converters, one module per benchmark.

Each module has ``evaluate(result_file, **inputs) -> dict`` and a CLI
(``python -m llava.eval.scoring.<name> --result-file ... [--output-json ...]``). Which
benchmark each one scores, with which inputs and which metric is the headline, is declared
with the benchmark in :mod:`llava.eval.tasks` (one entry per benchmark), read by the eval runner.

Aggregate metrics are percentages. :mod:`.common` holds the reading and matching rules
(unknown / missing / duplicate ids are reported, never silently dropped); :mod:`.report` the
coverage lines, warnings, exit status and headline status every scorer prints the same way.
"""
