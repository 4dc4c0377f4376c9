"""``ray job submit`` entrypoints, one module per stage: ``python -m ray_jobs.<stage> --config RECIPE``.

Each module is the same few lines: it hands its arguments to :func:`clinray.jobs.main`, the runner the
``clinray`` CLI and the demo use too (config checked before Ray, ``RAY_ADDRESS`` honoured, exit code 0 / 1
/ 2). ``--config`` is required: a job never falls back to the tiny recipe on a cluster.
"""
