"""``python -m pclab.bench``: the speed benchmarks' command line (:func:`pclab.bench.run.script_main`)."""

from .run import script_main

script_main()
