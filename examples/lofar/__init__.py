"""A LOFAR-style pipeline on one machine: archives → processing → 64× average → Kraków.

    .venv/bin/python -m examples.lofar [--subbands 24] [--subband-size 8M] [--inject-faults]

See ``examples/lofar/README.md`` for what each stage does and which transferd
commands it runs.
"""
