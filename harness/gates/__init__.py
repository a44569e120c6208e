"""The gate suite that ``harness run`` (or ``pytest --pyargs harness.gates``) executes."""
